"""Tasks of diffenvs (installed as ``diffenvs.tasks``): scene, loss, reward, observation, sampler."""

"""Warp kernels of the MLS-MPM solver: quadratic B-splines, APIC transfer, one thread per particle or node.

Batched over worlds: particle kernels run over (world, particle), grid kernels over
(world, i, j, k). Every kernel writes fresh output arrays and never its inputs.
"""

from __future__ import annotations

import functools

import warp as wp


@wp.struct
class MPMParams:
    """Constants of one solver (see MPMModel for units)."""

    dx: float
    inv_dx: float
    grid_res: int
    boundary_cells: int
    particle_volume: float
    particle_mass: float
    mu: float
    lam: float
    yield_stress: float
    gravity: wp.vec3
    ground_friction: float
    min_node_mass: float


@wp.func
def bspline_weights(fx: float) -> wp.vec3:
    """Quadratic B-spline weights of a stencil's nodes 0, 1, 2 along one axis, for the fractional position ``fx``.

    A node's weight is the product of its three axes' weights. The stencil loops below hoist
    these products (and the other per-node terms) out of the inner loops: the transfers are
    compute-bound on the CPU, so each multiply saved in the 27-node loop counts.
    """
    a = 1.5 - fx
    b = fx - 1.0
    c = fx - 0.5
    return wp.vec3(0.5 * a * a, 0.75 - b * b, 0.5 * c * c)


@wp.func
def bspline_slopes(fx: float) -> wp.vec3:
    """Derivatives of :func:`bspline_weights` with respect to ``fx``."""
    return wp.vec3(fx - 1.5, 2.0 - 2.0 * fx, fx - 0.5)


@wp.func
def bspline_weights3(fx: wp.vec3):
    """:func:`bspline_weights` along each axis (x, y, z)."""
    return bspline_weights(fx[0]), bspline_weights(fx[1]), bspline_weights(fx[2])


@wp.func
def bspline_slopes3(fx: wp.vec3):
    """:func:`bspline_slopes` along each axis (x, y, z)."""
    return bspline_slopes(fx[0]), bspline_slopes(fx[1]), bspline_slopes(fx[2])


@wp.func
def column(A: wp.mat33, j: int) -> wp.vec3:
    """Column ``j`` of ``A``."""
    return wp.vec3(A[0, j], A[1, j], A[2, j])


@wp.func
def stencil_base(xg: wp.vec3, lo: wp.vec3i, hi: wp.vec3i) -> wp.vec3i:
    """Lowest node of a particle's 3x3x3 stencil, clamped to [lo, hi] per axis.

    The transfers clamp to their world's active region (``bounds[w]`` = lo, hi; its nodes are
    lo .. hi + 2, see :func:`in_region`): only that box is cleared and updated, so a particle
    that outran it (a diverging state; the region's
    margin covers any particle moving at its current speed plus the tools') still reads and
    writes cleared nodes, as a particle at the domain's edge does. :func:`p2g_mass` clamps to the
    whole grid.
    """
    return wp.vec3i(
        wp.clamp(int(wp.floor(xg[0] - 0.5)), lo[0], hi[0]),
        wp.clamp(int(wp.floor(xg[1] - 0.5)), lo[1], hi[1]),
        wp.clamp(int(wp.floor(xg[2] - 0.5)), lo[2], hi[2]),
    )


@wp.func
def stencil(x: wp.vec3, inv_dx: float, lo: wp.vec3i, hi: wp.vec3i):
    """A particle's stencil at position ``x``: its lowest node (see :func:`stencil_base`) and its
    position relative to that node in cells, fx (the B-spline weights' argument)."""
    xg = x * inv_dx
    base = stencil_base(xg, lo, hi)
    return base, xg - wp.vec3(float(base[0]), float(base[1]), float(base[2]))


@wp.func
def whole_grid_top(grid_res: int) -> wp.vec3i:
    """The highest stencil base of the whole grid (see :func:`stencil_base`)."""
    return wp.vec3i(grid_res - 3, grid_res - 3, grid_res - 3)


@wp.func
def in_region(i: int, j: int, k: int, lo: wp.vec3i, hi: wp.vec3i) -> bool:
    """Whether node (i, j, k) lies in the active region of stencil bases [lo, hi] (nodes lo .. hi + 2)."""
    return (i >= lo[0] and i <= hi[0] + 2 and j >= lo[1] and j <= hi[1] + 2 and k >= lo[2] and k <= hi[2] + 2)


@wp.func
def hencky_strain(sig: wp.vec3) -> wp.vec3:
    """Principal Hencky strains log(sigma), with singular values floored at 0.05."""
    return wp.vec3(wp.log(wp.max(sig[0], 0.05)), wp.log(wp.max(sig[1], 0.05)), wp.log(wp.max(sig[2], 0.05)))


@wp.func
def deviator(e: wp.vec3) -> wp.vec3:
    """``e`` minus its mean."""
    mean = (e[0] + e[1] + e[2]) / 3.0
    return e - wp.vec3(mean, mean, mean)


@wp.func
def elastic_by_bound(F: wp.mat33, mu: float, yield_stress: float) -> float:
    """1.0 where an SVD-free bound proves that F does not yield (von Mises on the Hencky strain), else 0.0.

    With b = F F^T / det(F)^(2/3) and d = |b - I|_F < 1, the deviatoric Hencky strain is at most
    d / (2 (1 - d)) (|log x| <= |x - 1| / min(x, 1) on b's eigenvalues). Below the yield strain
    that bound settles it without an SVD, as for all dough at rest. 0.0 means "not settled":
    the SVD decides.
    """
    J = wp.determinant(F)
    if J > 0.0:
        b = F * wp.transpose(F) * wp.pow(J, -2.0 / 3.0) - wp.identity(n=3, dtype=float)
        d = wp.sqrt(wp.ddot(b, b))
        if d < 0.5 and 0.5 * d / (1.0 - d) < yield_stress / (2.0 * mu):
            return 1.0
    return 0.0


@wp.func_grad(elastic_by_bound)
def adj_elastic_by_bound(F: wp.mat33, mu: float, yield_stress: float, adj_ret: float):
    # The result only chooses a branch: it passes no gradient (and |b - I|'s square root has
    # none at rest, where b = I).
    pass


@wp.func
def von_mises_project(F: wp.mat33, mu: float, yield_stress: float) -> wp.mat33:
    """Return mapping of von Mises plasticity on the Hencky strain.

    Where the material does not yield the trial F is returned unchanged and the adjoint is the
    identity: exact at rest, where the SVD's adjoint is inaccurate, and free of its cost. One SVD
    per particle that the cheap bound (:func:`elastic_by_bound`) does not settle both decides
    and projects; its adjoint runs (on zero incoming gradients) only for such a particle that
    then does not yield, and the solver's backward pass runs this function's adjoint for the
    yielding particles alone (:func:`plastic_projection`).
    """
    if elastic_by_bound(F, mu, yield_stress) > 0.0:
        return F
    U = wp.mat33()
    sig = wp.vec3()
    V = wp.mat33()
    wp.svd3(F, U, sig, V)
    e = hencky_strain(sig)
    e_hat = deviator(e)
    norm = wp.sqrt(wp.dot(e_hat, e_hat) + 1.0e-20)
    excess = norm - yield_stress / (2.0 * mu)
    if excess > 0.0:
        e_new = e - e_hat * (excess / norm)
        return U * wp.diag(wp.vec3(wp.exp(e_new[0]), wp.exp(e_new[1]), wp.exp(e_new[2]))) * wp.transpose(V)
    return F


SERIES_RADIUS = 0.1
"""|b - I|_F (b: the isochoric left Cauchy-Green tensor) below which the series return mapping
applies: its 8-term logarithm is then exact to |b - I|^9 / 9 < 1.2e-10, far below float32's rounding."""


@wp.func
def log_near_identity(X: wp.mat33) -> wp.mat33:
    """log(I + X) = X - X^2/2 + X^3/3 - ... to 8 terms (Horner); for |X|_F < :data:`SERIES_RADIUS`."""
    eye = wp.identity(n=3, dtype=float)
    R = eye * (1.0 / 8.0)
    R = eye * (1.0 / 7.0) - X * R
    R = eye * (1.0 / 6.0) - X * R
    R = eye * (1.0 / 5.0) - X * R
    R = eye * (1.0 / 4.0) - X * R
    R = eye * (1.0 / 3.0) - X * R
    R = eye * 0.5 - X * R
    R = eye - X * R
    return X * R


@wp.func
def exp_near_zero(M: wp.mat33) -> wp.mat33:
    """exp(M) = I + M + M^2/2 + M^3/6 + M^4/24 (Horner); its error |M|^5 / 120 is below 3e-9 for the
    return mapping's |M| (the strain's excess over the yield strain) under 0.05."""
    eye = wp.identity(n=3, dtype=float)
    R = eye + M * (1.0 / 4.0)
    R = eye + M * R * (1.0 / 3.0)
    R = eye + M * R * 0.5
    return eye + M * R


@wp.func
def von_mises_project_series(F: wp.mat33, mu: float, yield_stress: float) -> wp.mat33:
    """The return mapping of :func:`von_mises_project` without an SVD near the identity.

    With b = F F^T / det(F)^(2/3), the deviatoric Hencky strain is E = log(b) / 2 (b has
    determinant 1), and the projection onto the yield surface is F <- exp(-(excess / |E|) E) F:
    the same map as scaling the SVD's principal log-strains, written in the spatial frame. Where
    |b - I| < :data:`SERIES_RADIUS` (every yielding particle of the tasks' episodes: their strain
    is a little above the yield strain, 0.012 at the default material) both functions are series,
    about three times cheaper than Warp's ``svd3`` and closer to a float64 reference (7e-5 against
    1.5e-7 at worst over a TripleMove episode: ``svd3`` loses digits where two stretches meet, and
    so does its adjoint; the series' adjoint is exact there). Beyond the radius: the SVD's mapping.
    Elastic states (the same cheap bound as :func:`elastic_by_bound`, judged on |b - I|^2 from the
    same X = b - I that the series uses, so b is built once) are returned unchanged.
    """
    J = wp.determinant(F)
    if J > 0.0:
        X = F * wp.transpose(F) * wp.pow(J, -2.0 / 3.0) - wp.identity(n=3, dtype=float)
        d2 = wp.ddot(X, X)
        # elastic_by_bound's test d < 0.5 and d / (2 (1 - d)) < k, solved for d: d < min(0.5, 2k / (1 + 2k)),
        # squared (no square root, whose adjoint is undefined at rest).
        k2 = yield_stress / mu
        settled = wp.min(0.5, k2 / (1.0 + k2))
        if d2 < settled * settled:
            return F
        if d2 < SERIES_RADIUS * SERIES_RADIUS:
            E = 0.5 * log_near_identity(X)
            E = E - (wp.trace(E) / 3.0) * wp.identity(n=3, dtype=float)
            norm = wp.sqrt(wp.ddot(E, E) + 1.0e-20)
            excess = norm - yield_stress / (2.0 * mu)
            if excess > 0.0:
                return exp_near_zero(E * (-excess / norm)) * F
            return F
    return von_mises_project(F, mu, yield_stress)


@wp.func
def kirchhoff_neo_hookean(F: wp.mat33, mu: float, lam: float) -> wp.mat33:
    """Kirchhoff stress tau = mu (F F^T - I) + lam ln(J) I of compressible Neo-Hookean elasticity."""
    J = wp.determinant(F)
    return mu * (F * wp.transpose(F) - wp.identity(n=3, dtype=float)) + lam * wp.log(J) * wp.identity(n=3, dtype=float)


@wp.func
def trial_deformation(C: wp.mat33, F: wp.mat33, dt: float) -> wp.mat33:
    """Elastic trial deformation gradient (I + dt C) F."""
    return (wp.identity(n=3, dtype=float) + dt * C) * F


@wp.func
def updated_deformation(C: wp.mat33, F: wp.mat33, params: MPMParams, dt: float) -> wp.mat33:
    """Elastic trial F = (I + dt C) F, then the plastic projection (the SVD's, :func:`von_mises_project`)."""
    return von_mises_project(trial_deformation(C, F, dt), params.mu, params.yield_stress)


@wp.func
def updated_deformation_series(C: wp.mat33, F: wp.mat33, params: MPMParams, dt: float) -> wp.mat33:
    """Elastic trial F = (I + dt C) F, then the series' plastic projection (:func:`von_mises_project_series`)."""
    return von_mises_project_series(trial_deformation(C, F, dt), params.mu, params.yield_stress)


@wp.func
def stress_scale(params: MPMParams, dt: float) -> float:
    """Factor of the Kirchhoff stress in the MLS-MPM affine term: -dt V_p 4 / dx^2."""
    return -dt * params.particle_volume * 4.0 * params.inv_dx * params.inv_dx


@wp.func
def apic_affine(F: wp.mat33, C: wp.mat33, params: MPMParams, dt: float) -> wp.mat33:
    """MLS-MPM affine momentum term: stress impulse plus the APIC matrix times the mass."""
    tau = kirchhoff_neo_hookean(F, params.mu, params.lam)
    return stress_scale(params, dt) * tau + params.particle_mass * C


def make_p2g_scatter(update, key: str) -> wp.Kernel:
    """The particle-to-grid kernel with ``update`` (:func:`updated_deformation` or
    :func:`updated_deformation_series`) compiled in: one kernel per return mapping, so neither pays for the other's code."""

    def _p2g_scatter(
        particle_x: wp.array2d(dtype=wp.vec3),
        particle_v: wp.array2d(dtype=wp.vec3),
        particle_C: wp.array2d(dtype=wp.mat33),
        particle_F: wp.array2d(dtype=wp.mat33),
        params: MPMParams,
        dt: float,
        bounds: wp.array2d(dtype=wp.vec3i),
        particle_F_out: wp.array2d(dtype=wp.mat33),
        grid_mv: wp.array4d(dtype=wp.vec3),
        grid_m: wp.array4d(dtype=float),
    ):
        """Update F (elastic trial, then plastic projection) and scatter APIC momentum and mass.

        Node n = base + (i, j, k) gets w_n (m v + A (x_n - x_p)) with A the affine term; written as
        w_n (q0 + dx (i a0 + j a1 + k a2)) with q0 = m v - A (x_p - x_base), a the columns of A.
        """
        w, p = wp.tid()
        base, fx = stencil(particle_x[w, p], params.inv_dx, bounds[w, 0], bounds[w, 1])
        C = particle_C[w, p]
        F = wp.static(update)(C, particle_F[w, p], params, dt)
        particle_F_out[w, p] = F
        A = apic_affine(F, C, params, dt)
        q0 = params.particle_mass * particle_v[w, p] - params.dx * (A * fx)
        a0 = params.dx * column(A, 0)
        a1 = params.dx * column(A, 1)
        a2 = params.dx * column(A, 2)
        wx, wy, wz = bspline_weights3(fx)
        for i in range(3):
            qi = q0 + float(i) * a0
            for j in range(3):
                qij = qi + float(j) * a1
                wij = wx[i] * wy[j]
                for k in range(3):
                    weight = wij * wz[k]
                    wp.atomic_add(grid_mv, w, base[0] + i, base[1] + j, base[2] + k, weight * (qij + float(k) * a2))
                    wp.atomic_add(grid_m, w, base[0] + i, base[1] + j, base[2] + k, weight * params.particle_mass)

    return wp.Kernel(_p2g_scatter, key=key, module=wp.get_module(__name__))


p2g_scatter = make_p2g_scatter(updated_deformation, "p2g_scatter")
p2g_scatter_series = make_p2g_scatter(updated_deformation_series, "p2g_scatter_series")


@wp.func
def differs(A: wp.mat33, B: wp.mat33) -> bool:
    """Whether any entry of ``A`` differs from that of ``B``."""
    D = A - B
    largest = float(0.0)  # noqa: UP018  (a Warp variable reassigned below)
    for i in range(3):
        for j in range(3):
            largest = wp.max(largest, wp.abs(D[i, j]))
    return largest > 0.0


@wp.func
def neo_hookean_adjoint(F: wp.mat33, adj_tau: wp.mat33, mu: float, lam: float) -> wp.mat33:
    """Gradient with respect to F of sum(adj_tau * tau(F)) for :func:`kirchhoff_neo_hookean`."""
    return mu * (adj_tau + wp.transpose(adj_tau)) * F + (lam * wp.trace(adj_tau)) * wp.transpose(wp.inverse(F))


@wp.kernel(enable_backward=False)
def p2g_adjoint(
    particle_x: wp.array2d(dtype=wp.vec3),
    particle_v: wp.array2d(dtype=wp.vec3),
    particle_C: wp.array2d(dtype=wp.mat33),
    particle_F: wp.array2d(dtype=wp.mat33),
    particle_F_out: wp.array2d(dtype=wp.mat33),
    params: MPMParams,
    dt: float,
    bounds: wp.array2d(dtype=wp.vec3i),
    adj_grid_mv: wp.array4d(dtype=wp.vec3),
    adj_grid_m: wp.array4d(dtype=float),
    adj_particle_F_out: wp.array2d(dtype=wp.mat33),
    adj_particle_x: wp.array2d(dtype=wp.vec3),
    adj_particle_v: wp.array2d(dtype=wp.vec3),
    adj_particle_C: wp.array2d(dtype=wp.mat33),
    adj_particle_F: wp.array2d(dtype=wp.mat33),
    yield_count: wp.array(dtype=wp.int32),
    yield_index: wp.array(dtype=wp.int32),
    adj_projected: wp.array2d(dtype=wp.mat33),
):
    """Hand-written adjoint of :func:`p2g_scatter`: adds to the gradients of x, v, C and F.

    One pass over the stencil gathers the grid's momentum and mass gradients; the stress
    (Neo-Hookean, from the updated F) and the elastic trial are differentiated in closed form.
    Where the particle yields, the plastic projection's adjoint is left to
    :func:`plastic_projection`'s generated adjoint: this kernel appends the particle's flat index
    (world * particles + particle) to ``yield_index`` (``yield_count`` counts them; zero it
    first) and writes the gradient of its projected F into ``adj_projected``.
    """
    w, p = wp.tid()
    base, fx = stencil(particle_x[w, p], params.inv_dx, bounds[w, 0], bounds[w, 1])
    C = particle_C[w, p]
    F_in = particle_F[w, p]
    F_new = particle_F_out[w, p]
    A = apic_affine(F_new, C, params, dt)
    mass = params.particle_mass
    q0 = mass * particle_v[w, p] - params.dx * (A * fx)
    a0 = params.dx * column(A, 0)
    a1 = params.dx * column(A, 1)
    a2 = params.dx * column(A, 2)
    wx, wy, wz = bspline_weights3(fx)
    sx, sy, sz = bspline_slopes3(fx)
    # g_n, h_n: the grid gradients; s_n = g_n . (m v + A (x_n - x_p)) + h_n m is the gradient of
    # node n's weight. Sums: G = sum w g, P_d = sum w g n_d, grad_fx = sum s_n grad(w_n).
    G = wp.vec3(0.0)
    P0 = wp.vec3(0.0)
    P1 = wp.vec3(0.0)
    P2 = wp.vec3(0.0)
    grad_fx = wp.vec3(0.0)
    for i in range(3):
        qi = q0 + float(i) * a0
        Gi = wp.vec3(0.0)
        s_w = float(0.0)  # noqa: UP018  (Warp variables reassigned below)
        s_sy = float(0.0)  # noqa: UP018
        s_sz = float(0.0)  # noqa: UP018
        for j in range(3):
            qij = qi + float(j) * a1
            Gj = wp.vec3(0.0)
            Gk = wp.vec3(0.0)
            t_w = float(0.0)  # noqa: UP018
            t_s = float(0.0)  # noqa: UP018
            for k in range(3):
                g = adj_grid_mv[w, base[0] + i, base[1] + j, base[2] + k]
                h = adj_grid_m[w, base[0] + i, base[1] + j, base[2] + k]
                s = wp.dot(g, qij + float(k) * a2) + h * mass
                t_w += wz[k] * s
                t_s += sz[k] * s
                wg = wz[k] * g
                Gj += wg
                Gk += float(k) * wg
            wij = wx[i] * wy[j]
            s_w += wy[j] * t_w
            s_sy += sy[j] * t_w
            s_sz += wy[j] * t_s
            Gi += wy[j] * Gj
            P1 += (wij * float(j)) * Gj
            P2 += wij * Gk
        grad_fx += wp.vec3(sx[i] * s_w, wx[i] * s_sy, wx[i] * s_sz)
        G += wx[i] * Gi
        P0 += (wx[i] * float(i)) * Gi
    adj_A = params.dx * (wp.matrix_from_cols(P0, P1, P2) - wp.outer(G, fx))
    grad_fx = grad_fx - params.dx * (wp.transpose(A) * G)
    adj_particle_x[w, p] = adj_particle_x[w, p] + params.inv_dx * grad_fx
    adj_particle_v[w, p] = adj_particle_v[w, p] + mass * G
    # A = -dt V 4 / dx^2 tau(F_new) + m C
    adj_F_new = adj_particle_F_out[w, p] + neo_hookean_adjoint(F_new, stress_scale(params, dt) * adj_A, params.mu, params.lam)
    adj_C = mass * adj_A
    # The projection returns the trial F itself where the particle does not yield, so a changed
    # F marks a yielding one without repeating the yield test. (Should rounding ever make the two
    # differ for a particle that did not yield, it merely takes the generated adjoint, which is
    # exact for it as well.)
    if differs(F_new, trial_deformation(C, F_in, dt)):
        slot = wp.atomic_add(yield_count, 0, 1)
        yield_index[slot] = w * particle_x.shape[1] + p
        adj_projected[w, p] = adj_F_new
    else:
        adj_particle_F[w, p] = adj_particle_F[w, p] + wp.transpose(wp.identity(n=3, dtype=float) + dt * C) * adj_F_new
        adj_C = adj_C + dt * adj_F_new * wp.transpose(F_in)
    adj_particle_C[w, p] = adj_particle_C[w, p] + adj_C


def make_plastic_projection(update, key: str) -> wp.Kernel:
    """The yielding particles' projection kernel (see :func:`make_p2g_scatter`) with ``update`` compiled in."""

    def _plastic_projection(
        yield_count: wp.array(dtype=wp.int32),
        yield_index: wp.array(dtype=wp.int32),
        particle_C: wp.array2d(dtype=wp.mat33),
        particle_F: wp.array2d(dtype=wp.mat33),
        params: MPMParams,
        dt: float,
        projected: wp.array2d(dtype=wp.mat33),
    ):
        """Updated F of the particles listed by :func:`p2g_adjoint`; run for its generated adjoint only.

        :func:`p2g_adjoint` differentiates everything else; Warp's adjoint of this kernel takes the
        gradient of the projected F of yielding particles back to their C and F. Thread ``i`` handles
        the ``i``-th listed particle (threads past ``yield_count`` do nothing), so a launch over just
        the yielding particles spares the others the generated adjoint's per-thread cost.
        """
        i = wp.tid()
        if i < yield_count[0]:
            index = yield_index[i]
            w = index // particle_C.shape[1]
            p = index - w * particle_C.shape[1]
            projected[w, p] = wp.static(update)(particle_C[w, p], particle_F[w, p], params, dt)

    return wp.Kernel(_plastic_projection, key=key, module=wp.get_module(__name__))


plastic_projection = make_plastic_projection(updated_deformation, "plastic_projection")
plastic_projection_series = make_plastic_projection(updated_deformation_series, "plastic_projection_series")


@wp.func
def tool_sdf(kind: int, size: wp.vec3, p: wp.vec3) -> float:
    """Signed distance of local point ``p`` to a tool (negative inside)."""
    if kind == 0:
        return wp.sqrt(wp.dot(p, p) + 1.0e-12) - size[0]
    if kind == 1:
        q = p - wp.vec3(wp.clamp(p[0], -size[1], size[1]), 0.0, 0.0)
        return wp.sqrt(wp.dot(q, q) + 1.0e-12) - size[0]
    if kind == 3:  # torus: ring of radius size[0] about the local y axis, tube of radius size[1]
        ring = wp.sqrt(p[0] * p[0] + p[2] * p[2] + 1.0e-12) - size[0]
        return wp.sqrt(ring * ring + p[1] * p[1] + 1.0e-12) - size[1]
    q = wp.vec3(wp.abs(p[0]), wp.abs(p[1]), wp.abs(p[2])) - size
    outside = wp.vec3(wp.max(q[0], 0.0), wp.max(q[1], 0.0), wp.max(q[2], 0.0))
    return wp.sqrt(wp.dot(outside, outside) + 1.0e-12) + wp.min(wp.max(q[0], wp.max(q[1], q[2])), 0.0)


@wp.func
def tool_reach(kind: int, size: wp.vec3) -> float:
    """Radius of a sphere about the tool's centre that holds the whole tool."""
    if kind == 0:
        return size[0]
    if kind == 1 or kind == 3:
        return size[0] + size[1]
    return wp.length(size)


@wp.func
def tool_normal(kind: int, size: wp.vec3, p: wp.vec3) -> wp.vec3:
    """Outward unit normal of a tool at local point ``p``, normalised as v / sqrt(|v|^2 + eps^2)."""
    n = p
    if kind == 1:
        n = p - wp.vec3(wp.clamp(p[0], -size[1], size[1]), 0.0, 0.0)
    if kind == 3:  # from the nearest point of the ring
        radial = wp.sqrt(p[0] * p[0] + p[2] * p[2] + 1.0e-12)
        n = wp.vec3(p[0] * (1.0 - size[0] / radial), p[1], p[2] * (1.0 - size[0] / radial))
    if kind == 2:
        q = wp.vec3(wp.abs(p[0]), wp.abs(p[1]), wp.abs(p[2])) - size
        if wp.max(q[0], wp.max(q[1], q[2])) > 0.0:
            n = wp.vec3(
                wp.sign(p[0]) * wp.max(q[0], 0.0), wp.sign(p[1]) * wp.max(q[1], 0.0), wp.sign(p[2]) * wp.max(q[2], 0.0)
            )
        elif q[0] >= q[1] and q[0] >= q[2]:
            n = wp.vec3(wp.sign(p[0]), 0.0, 0.0)
        elif q[1] >= q[2]:
            n = wp.vec3(0.0, wp.sign(p[1]), 0.0)
        else:
            n = wp.vec3(0.0, 0.0, wp.sign(p[2]))
    return n / wp.sqrt(wp.dot(n, n) + 1.0e-12)


@wp.func
def beyond_reach(offset: wp.vec3, kind: int, size: wp.vec3, softness: float) -> bool:
    """Whether a point at ``offset`` from a tool's centre lies outside its bounding sphere grown by ``softness``."""
    reach = tool_reach(kind, size) + softness
    return wp.dot(offset, offset) > reach * reach


@wp.func
def collide_tool(
    v: wp.vec3, x: wp.vec3, tool_pos: wp.vec3, tool_rot: wp.quat, tool_vel: wp.vec3, tool_omega: wp.vec3,
    kind: int, size: wp.vec3, friction: float, softness: float,
) -> wp.vec3:
    """Grid-node velocity after contact with one tool (Coulomb friction, optional soft influence).

    Nodes beyond the tool's bounding sphere (grown by ``softness``) return at once: most nodes
    touch no tool, and the generated adjoint then skips the SDF's adjoint as well.
    """
    offset = x - tool_pos
    if beyond_reach(offset, kind, size, softness):
        return v
    local = wp.quat_rotate_inv(tool_rot, offset)
    d = tool_sdf(kind, size, local)
    influence = float(0.0)  # noqa: UP018  (a Warp variable reassigned below, not a constant)
    if d <= 0.0:
        influence = 1.0
    elif softness > 0.0:
        influence = wp.max(1.0 - d / softness, 0.0)
    if influence > 0.0:
        n = wp.quat_rotate(tool_rot, tool_normal(kind, size, local))
        v_tool = tool_vel + wp.cross(tool_omega, x - tool_pos)
        rel = v - v_tool
        vn = wp.dot(rel, n)
        if vn < 0.0:
            vt = rel - vn * n
            vt_len = wp.sqrt(wp.dot(vt, vt) + 1.0e-12)
            rel_new = vt * wp.max(1.0 + friction * vn / vt_len, 0.0)
            return v + influence * (v_tool + rel_new - v)
    return v


@wp.func
def apply_walls(v: wp.vec3, i: int, j: int, k: int, params: MPMParams) -> wp.vec3:
    """Slip walls on the sides and the ceiling; a floor with Coulomb friction."""
    lo = params.boundary_cells
    hi = params.grid_res - params.boundary_cells
    out = v
    if i < lo and out[0] < 0.0:
        out = wp.vec3(0.0, out[1], out[2])
    if i > hi and out[0] > 0.0:
        out = wp.vec3(0.0, out[1], out[2])
    if k < lo and out[2] < 0.0:
        out = wp.vec3(out[0], out[1], 0.0)
    if k > hi and out[2] > 0.0:
        out = wp.vec3(out[0], out[1], 0.0)
    if j > hi and out[1] > 0.0:
        out = wp.vec3(out[0], 0.0, out[2])
    if j < lo and out[1] < 0.0:
        vt = wp.vec3(out[0], 0.0, out[2])
        vt_len = wp.sqrt(wp.dot(vt, vt) + 1.0e-12)
        out = vt * wp.max(1.0 + params.ground_friction * out[1] / vt_len, 0.0)
    return out


@functools.cache
def make_grid_update(tool_count: int) -> wp.Kernel:
    """The grid-update kernel for ``tool_count`` tools (the tool loop is unrolled for autodiff).

    With ``mode`` = 0 thread (w, ri, rj, rk) updates node ``origin`` + (ri, rj, rk) of world w if it
    lies in the world's active region (``bounds[w]``, see :func:`in_region`); ``mode`` = 2 does the
    same and then zeroes the node in ``spent_mv`` and ``spent_m``, passed ``grid_mv`` and ``grid_m``
    by a step that is not differentiated (it consumes them, so the next substep over the same
    region needs no clear; separate arguments, because Warp's checks flag a kernel that writes an
    input it reads). Other modes never write them.
    With ``mode`` = 1, launched over (1, n, 1, 1), thread ri updates the node whose flat index is
    ``node_index[ri]`` if ri < ``node_count[0]``: the solver runs Warp's adjoint of it that way for
    the nodes :func:`grid_update_adjoint_plain` leaves to it (touched by a tool or a wall).
    """

    @wp.kernel(module="unique")
    def grid_update(
        grid_mv: wp.array4d(dtype=wp.vec3),
        grid_m: wp.array4d(dtype=float),
        tool_pos: wp.array2d(dtype=wp.vec3),
        tool_rot: wp.array2d(dtype=wp.quat),
        tool_vel: wp.array2d(dtype=wp.vec3),
        tool_omega: wp.array2d(dtype=wp.vec3),
        tool_kind: wp.array(dtype=int),
        tool_size: wp.array(dtype=wp.vec3),
        tool_friction: wp.array(dtype=float),
        tool_softness: wp.array(dtype=float),
        params: MPMParams,
        dt: float,
        origin: wp.vec3i,
        bounds: wp.array2d(dtype=wp.vec3i),
        node_count: wp.array(dtype=wp.int32),
        node_index: wp.array(dtype=wp.int32),
        mode: int,
        grid_v: wp.array4d(dtype=wp.vec3),
        spent_mv: wp.array4d(dtype=wp.vec3),
        spent_m: wp.array4d(dtype=float),
    ):
        w, ri, rj, rk = wp.tid()
        i = origin[0] + ri
        j = origin[1] + rj
        k = origin[2] + rk
        run = True
        if mode != 1:
            run = in_region(i, j, k, bounds[w, 0], bounds[w, 1])
        else:
            run = ri < node_count[0]
            if run:
                node = node_index[ri]
                k = node % grid_m.shape[3]
                node = node // grid_m.shape[3]
                j = node % grid_m.shape[2]
                node = node // grid_m.shape[2]
                i = node % grid_m.shape[1]
                w = node // grid_m.shape[1]
        if run:
            m = grid_m[w, i, j, k]
            v = wp.vec3(0.0)
            if m > params.min_node_mass:
                v = grid_mv[w, i, j, k] / m + dt * params.gravity
                x = wp.vec3(float(i), float(j), float(k)) * params.dx
                for t in range(wp.static(tool_count)):
                    v = collide_tool(
                        v, x, tool_pos[w, t], tool_rot[w, t], tool_vel[w, t], tool_omega[w, t],
                        tool_kind[t], tool_size[t], tool_friction[t], tool_softness[t],
                    )
                v = apply_walls(v, i, j, k, params)
            grid_v[w, i, j, k] = v
            if mode == 2:
                spent_mv[w, i, j, k] = wp.vec3(0.0)
                spent_m[w, i, j, k] = 0.0

    return grid_update


@wp.func
def near_wall(i: int, j: int, k: int, params: MPMParams) -> bool:
    """Whether :func:`apply_walls` may change a velocity at node (i, j, k)."""
    lo = params.boundary_cells
    hi = params.grid_res - params.boundary_cells
    return i < lo or i > hi or j < lo or j > hi or k < lo or k > hi


@wp.kernel(enable_backward=False)
def grid_update_adjoint_plain(
    grid_mv: wp.array4d(dtype=wp.vec3),
    grid_m: wp.array4d(dtype=float),
    tool_pos: wp.array2d(dtype=wp.vec3),
    tool_rot: wp.array2d(dtype=wp.quat),
    tool_kind: wp.array(dtype=int),
    tool_size: wp.array(dtype=wp.vec3),
    tool_softness: wp.array(dtype=float),
    tool_count: int,
    params: MPMParams,
    origin: wp.vec3i,
    bounds: wp.array2d(dtype=wp.vec3i),
    adj_grid_v: wp.array4d(dtype=wp.vec3),
    adj_grid_mv: wp.array4d(dtype=wp.vec3),
    adj_grid_m: wp.array4d(dtype=float),
    node_count: wp.array(dtype=wp.int32),
    node_index: wp.array(dtype=wp.int32),
):
    """Hand-written adjoint of the grid update at the nodes that no tool and no wall touches.

    There v = mv / m + dt g, so the gradients of mv and m are adj_v / m and -adj_v . mv / m^2
    (added to). A node that a tool's influence reaches (inside it or within its softness) or next
    to a wall is appended to ``node_index`` (flat index; ``node_count`` counts them, zero it
    first) for the generated adjoint of the grid-update kernel, which is exact everywhere but
    costs several times more per node, even per node it skips.
    """
    w, ri, rj, rk = wp.tid()
    i = origin[0] + ri
    j = origin[1] + rj
    k = origin[2] + rk
    if not in_region(i, j, k, bounds[w, 0], bounds[w, 1]):
        return
    m = grid_m[w, i, j, k]
    if m > params.min_node_mass:
        touched = near_wall(i, j, k, params)
        x = wp.vec3(float(i), float(j), float(k)) * params.dx
        for t in range(tool_count):
            offset = x - tool_pos[w, t]
            if not beyond_reach(offset, tool_kind[t], tool_size[t], tool_softness[t]):
                d = tool_sdf(tool_kind[t], tool_size[t], wp.quat_rotate_inv(tool_rot[w, t], offset))
                if d <= 0.0 or d < tool_softness[t]:  # the tool's influence reaches the node
                    touched = True
        if touched:
            slot = wp.atomic_add(node_count, 0, 1)
            node_index[slot] = ((w * grid_m.shape[1] + i) * grid_m.shape[2] + j) * grid_m.shape[3] + k
        else:
            adj_v = adj_grid_v[w, i, j, k]
            inv_m = 1.0 / m
            adj_grid_mv[w, i, j, k] = adj_grid_mv[w, i, j, k] + inv_m * adj_v
            adj_grid_m[w, i, j, k] = adj_grid_m[w, i, j, k] - wp.dot(adj_v, grid_mv[w, i, j, k]) * inv_m * inv_m


@wp.kernel
def g2p_gather(
    particle_x: wp.array2d(dtype=wp.vec3),
    grid_v: wp.array4d(dtype=wp.vec3),
    params: MPMParams,
    dt: float,
    bounds: wp.array2d(dtype=wp.vec3i),
    particle_x_out: wp.array2d(dtype=wp.vec3),
    particle_v_out: wp.array2d(dtype=wp.vec3),
    particle_C_out: wp.array2d(dtype=wp.mat33),
):
    """Gather velocity and the APIC matrix from the grid, then advect the particle.

    C = 4 / dx^2 sum_n w_n v_n (x_n - x_p)^T, accumulated as sums of w_n v_n times the node's
    offsets (i, j, k) and corrected by v (x_p - x_base)^T once.
    """
    w, p = wp.tid()
    base, fx = stencil(particle_x[w, p], params.inv_dx, bounds[w, 0], bounds[w, 1])
    wx, wy, wz = bspline_weights3(fx)
    v = wp.vec3(0.0)
    P0 = wp.vec3(0.0)
    P1 = wp.vec3(0.0)
    P2 = wp.vec3(0.0)
    for i in range(3):
        Gi = wp.vec3(0.0)
        for j in range(3):
            wij = wx[i] * wy[j]
            Gj = wp.vec3(0.0)
            for k in range(3):
                wv = (wij * wz[k]) * grid_v[w, base[0] + i, base[1] + j, base[2] + k]
                Gj = Gj + wv
                P2 = P2 + float(k) * wv
            Gi = Gi + Gj
            P1 = P1 + float(j) * Gj
        v = v + Gi
        P0 = P0 + float(i) * Gi
    particle_v_out[w, p] = v
    particle_C_out[w, p] = (4.0 * params.inv_dx) * (wp.matrix_from_cols(P0, P1, P2) - wp.outer(v, fx))
    particle_x_out[w, p] = particle_x[w, p] + dt * v


@wp.kernel(enable_backward=False)
def g2p_gather_adjoint(
    particle_x: wp.array2d(dtype=wp.vec3),
    grid_v: wp.array4d(dtype=wp.vec3),
    params: MPMParams,
    dt: float,
    bounds: wp.array2d(dtype=wp.vec3i),
    adj_particle_x_out: wp.array2d(dtype=wp.vec3),
    adj_particle_v_out: wp.array2d(dtype=wp.vec3),
    adj_particle_C_out: wp.array2d(dtype=wp.mat33),
    adj_particle_x: wp.array2d(dtype=wp.vec3),
    adj_grid_v: wp.array4d(dtype=wp.vec3),
):
    """Hand-written adjoint of :func:`g2p_gather`: adds to the gradients of ``particle_x`` and ``grid_v``.

    One pass over the stencil: node n gets w_n u_n (atomics) with u_n = adj_v + 4/dx adj_C (n - fx),
    whose dot product with the node's velocity is also the gradient of its weight. Warp's
    generated adjoint costs about 5x the forward (it replays the forward and keeps every
    intermediate of the 27-node loop).
    """
    w, p = wp.tid()
    base, fx = stencil(particle_x[w, p], params.inv_dx, bounds[w, 0], bounds[w, 1])
    adj_x_out = adj_particle_x_out[w, p]
    adj_v = adj_particle_v_out[w, p] + dt * adj_x_out  # x_out = x + dt * v
    scale = 4.0 * params.inv_dx
    adj_C = scale * adj_particle_C_out[w, p]
    u0 = adj_v - adj_C * fx
    c0 = column(adj_C, 0)
    c1 = column(adj_C, 1)
    c2 = column(adj_C, 2)
    wx, wy, wz = bspline_weights3(fx)
    sx, sy, sz = bspline_slopes3(fx)
    v = wp.vec3(0.0)
    grad_fx = wp.vec3(0.0)
    for i in range(3):
        ui = u0 + float(i) * c0
        s_w = float(0.0)  # noqa: UP018  (Warp variables reassigned below)
        s_sy = float(0.0)  # noqa: UP018
        s_sz = float(0.0)  # noqa: UP018
        for j in range(3):
            uij = ui + float(j) * c1
            wij = wx[i] * wy[j]
            t_w = float(0.0)  # noqa: UP018
            t_s = float(0.0)  # noqa: UP018
            for k in range(3):
                u = uij + float(k) * c2
                weight = wij * wz[k]
                gv = grid_v[w, base[0] + i, base[1] + j, base[2] + k]
                wp.atomic_add(adj_grid_v, w, base[0] + i, base[1] + j, base[2] + k, weight * u)
                s = wp.dot(gv, u)
                t_w += wz[k] * s
                t_s += sz[k] * s
                v += weight * gv
            s_w += wy[j] * t_w
            s_sy += sy[j] * t_w
            s_sz += wy[j] * t_s
        grad_fx += wp.vec3(sx[i] * s_w, wx[i] * s_sy, wx[i] * s_sz)
    grad_fx = grad_fx - wp.transpose(adj_C) * v
    adj_particle_x[w, p] = adj_particle_x[w, p] + adj_x_out + params.inv_dx * grad_fx


@wp.kernel(enable_backward=False)
def clear_grid_region(
    origin: wp.vec3i,
    depth: int,
    bounds: wp.array2d(dtype=wp.vec3i),
    with_v: int,
    grid_mv: wp.array4d(dtype=wp.vec3),
    grid_m: wp.array4d(dtype=float),
    grid_v: wp.array4d(dtype=wp.vec3),
):
    """Zero each world's active region (``bounds[w]``), the only nodes a step touches: launched over
    (world, rows i, rows j) of a box from ``origin``, each thread clears the region's part of a row of
    ``depth`` nodes of ``grid_mv``, ``grid_m`` and, with ``with_v``, ``grid_v`` (the grid update writes
    every node of the region, so the forward pass need not clear the velocities)."""
    w, ri, rj = wp.tid()
    i = origin[0] + ri
    j = origin[1] + rj
    lo = bounds[w, 0]
    hi = bounds[w, 1]
    if i < lo[0] or i > hi[0] + 2 or j < lo[1] or j > hi[1] + 2:
        return
    for k in range(wp.max(origin[2], lo[2]), wp.min(origin[2] + depth, hi[2] + 3)):
        grid_mv[w, i, j, k] = wp.vec3(0.0)
        grid_m[w, i, j, k] = 0.0
        if with_v != 0:
            grid_v[w, i, j, k] = wp.vec3(0.0)


@wp.kernel(enable_backward=False)
def particle_extent(
    particle_x: wp.array2d(dtype=wp.vec3),
    particle_v: wp.array2d(dtype=wp.vec3),
    inv_dx: float,
    cells_now: wp.array2d(dtype=wp.int32),
    speed_now: wp.array(dtype=float),
    cells: wp.array2d(dtype=wp.int32),
    speed: wp.array(dtype=float),
    bad: wp.array(dtype=wp.int32),
):
    """Per world: the lowest and highest cell any particle is in (``cells[w]`` = min x, y, z, max x,
    y, z; initialise with :func:`init_extent`), the largest particle speed, and whether a particle
    is not finite or outside [-1e6, 1e6] cells (``bad``). ``cells_now`` and ``speed_now`` are
    ``cells`` and ``speed`` again, read before each atomic (separate arguments, because Warp's
    checks flag a kernel that reads an array it writes)."""
    w, p = wp.tid()
    xg = particle_x[w, p] * inv_dx
    s = wp.length(particle_v[w, p])
    limit = 1.0e6
    if not (wp.abs(xg[0]) < limit and wp.abs(xg[1]) < limit and wp.abs(xg[2]) < limit and s < limit):
        wp.atomic_max(bad, w, 1)  # NaN fails every comparison
        return
    # An atomic only where it may change the value (read first): the world's few addresses are
    # contended by all its particles, and after the first few almost none of them improves it.
    for a in range(3):
        low = int(wp.floor(xg[a]))
        high = int(wp.ceil(xg[a]))
        if low < cells_now[w, a]:
            wp.atomic_min(cells, w, a, low)
        if high > cells_now[w, 3 + a]:
            wp.atomic_max(cells, w, 3 + a, high)
    if s > speed_now[w]:
        wp.atomic_max(speed, w, s)


@wp.kernel(enable_backward=False)
def init_extent(cells: wp.array2d(dtype=wp.int32), speed: wp.array(dtype=float), bad: wp.array(dtype=wp.int32)):
    """Neutral start values of :func:`particle_extent`'s outputs."""
    w = wp.tid()
    for a in range(3):
        cells[w, a] = 2147483647
        cells[w, 3 + a] = -2147483647
    speed[w] = 0.0
    bad[w] = 0


@wp.kernel(enable_backward=False)
def finish_bounds(
    cells: wp.array2d(dtype=wp.int32),
    speed: wp.array(dtype=float),
    bad: wp.array(dtype=wp.int32),
    duration_over_dx: float,
    extra_speed: float,
    grid_res: int,
    bounds: wp.array2d(dtype=wp.vec3i),
):
    """Each world's active region: its particles' cells grown by the distance [cells] a particle
    travels in the step at its world's top speed plus ``extra_speed``, and by the stencil's reach;
    the whole grid where a particle is not finite or the margin exceeds the grid. Written as the
    range of stencil bases [lo, hi] (nodes lo .. hi + 2), at least 3 nodes per axis."""
    w = wp.tid()
    margin = (speed[w] + extra_speed) * duration_over_dx + 2.0
    top = grid_res - 3
    if bad[w] != 0 or not (margin < float(grid_res)):
        bounds[w, 0] = wp.vec3i(0, 0, 0)
        bounds[w, 1] = wp.vec3i(top, top, top)
        return
    grow = int(wp.ceil(margin))
    lo = wp.vec3i(0, 0, 0)
    hi = wp.vec3i(0, 0, 0)
    for a in range(3):
        first = wp.clamp(cells[w, a] - grow, 0, top)
        last = wp.clamp(cells[w, 3 + a] + grow - 2, 0, top)  # node last + 2 = the top cell + margin
        lo[a] = first
        hi[a] = wp.max(last, first)
    bounds[w, 0] = lo
    bounds[w, 1] = hi


@wp.kernel
def advance_tools(
    tool_pos: wp.array2d(dtype=wp.vec3),
    tool_rot: wp.array2d(dtype=wp.quat),
    tool_vel: wp.array2d(dtype=wp.vec3),
    tool_omega: wp.array2d(dtype=wp.vec3),
    dt: float,
    tool_pos_out: wp.array2d(dtype=wp.vec3),
    tool_rot_out: wp.array2d(dtype=wp.quat),
):
    """Move kinematic tools by their velocities (orientation integrated on the unit sphere)."""
    w, t = wp.tid()
    q = tool_rot[w, t]
    om = tool_omega[w, t]
    dq = wp.quat(om[0], om[1], om[2], 0.0) * q
    tool_pos_out[w, t] = tool_pos[w, t] + dt * tool_vel[w, t]
    tool_rot_out[w, t] = wp.normalize(q + (0.5 * dt) * dq)


@wp.kernel
def p2g_mass(
    particle_x: wp.array2d(dtype=wp.vec3),
    particle_weight: wp.array2d(dtype=float),
    params: MPMParams,
    grid_m: wp.array4d(dtype=float),
):
    """Scatter particle mass (times a per-particle weight) to the grid with the solver's B-spline weights."""
    w, p = wp.tid()
    base, fx = stencil(particle_x[w, p], params.inv_dx, wp.vec3i(0, 0, 0), whole_grid_top(params.grid_res))
    wx, wy, wz = bspline_weights3(fx)
    mass = params.particle_mass * particle_weight[w, p]
    for i in range(3):
        for j in range(3):
            wij = (mass * wx[i]) * wy[j]
            for k in range(3):
                wp.atomic_add(grid_m, w, base[0] + i, base[1] + j, base[2] + k, wij * wz[k])


@wp.kernel(enable_backward=False)
def p2g_mass_adjoint(
    particle_x: wp.array2d(dtype=wp.vec3),
    particle_weight: wp.array2d(dtype=float),
    params: MPMParams,
    adj_grid_m: wp.array4d(dtype=float),
    with_weight_grad: int,
    adj_particle_x: wp.array2d(dtype=wp.vec3),
    adj_particle_weight: wp.array2d(dtype=float),
):
    """Hand-written adjoint of :func:`p2g_mass`: adds to the gradients of the positions (and, with
    ``with_weight_grad``, of the weights), gathering the grid's mass gradient over the stencil."""
    w, p = wp.tid()
    base, fx = stencil(particle_x[w, p], params.inv_dx, wp.vec3i(0, 0, 0), whole_grid_top(params.grid_res))
    wx, wy, wz = bspline_weights3(fx)
    sx, sy, sz = bspline_slopes3(fx)
    total = float(0.0)  # noqa: UP018  (Warp variables reassigned below)
    grad_fx = wp.vec3(0.0)
    for i in range(3):
        s_w = float(0.0)  # noqa: UP018
        s_sy = float(0.0)  # noqa: UP018
        s_sz = float(0.0)  # noqa: UP018
        for j in range(3):
            t_w = float(0.0)  # noqa: UP018
            t_s = float(0.0)  # noqa: UP018
            for k in range(3):
                a = adj_grid_m[w, base[0] + i, base[1] + j, base[2] + k]
                t_w += wz[k] * a
                t_s += sz[k] * a
            s_w += wy[j] * t_w
            s_sy += sy[j] * t_w
            s_sz += wy[j] * t_s
        grad_fx += wp.vec3(sx[i] * s_w, wx[i] * s_sy, wx[i] * s_sz)
        total += wx[i] * s_w
    mass = params.particle_mass * particle_weight[w, p]
    adj_particle_x[w, p] = adj_particle_x[w, p] + (mass * params.inv_dx) * grad_fx
    if with_weight_grad != 0:
        adj_particle_weight[w, p] = adj_particle_weight[w, p] + params.particle_mass * total

"""The elastic symmetry class of a stiffness tensor in any orientation, with its symmetry frame.

An elastic tensor (centrosymmetric, so only proper rotations matter) belongs to exactly one of the 8 classes
of Forte & Vianello (1996): ``isotropic`` (SO(3)), ``cubic`` (O), ``transversely_isotropic`` (D_inf),
``tetragonal`` (D4), ``trigonal`` (D3), ``orthotropic`` (D2), ``monoclinic`` (Z2), ``triclinic`` (1).
Every class but triclinic has two-fold axes (equivalently, mirror planes: the tensor is centrosymmetric),
and every class is fixed by a group in a frame built from those axes:

1. **Two-fold axes.** For a two-fold rotation ``R_n`` about ``n``, ``|x - D(R_n) x|^2 / 4 = (|x|^2 - x.D(R_n)x)/2``
   is a polynomial in ``n``; it is evaluated on a fixed grid of the hemisphere with precomputed Wigner
   matrices (one small matrix product per tensor), its local minima are refined by Levenberg-Marquardt on
   the rotation, and those whose relative residual is within ``3 tol`` are kept.
2. **Frames.** Candidate principal axes ``z`` are the two-fold axes and the normalized cross products of pairs
   of them (the principal axis of a dihedral group is perpendicular to all its secondary axes, and e.g. a
   cube's three-fold axis is perpendicular to two of its two-fold axes); ``x`` is a two-fold axis
   perpendicular to ``z`` (or any perpendicular direction).
3. **Verification by projection.** For each class, from the highest symmetry down, the tensor is projected
   onto the class's invariant subspace (group average of ``wigner_D``) in each candidate frame; the best frame
   is refined by Levenberg-Marquardt and the class is accepted when the relative residual
   ``|C - P_G C|_F / |C|_F <= tol``. The highest accepted class is returned.

Because the decision is a projection residual, not a count of equal Kelvin eigenvalues, a tensor whose
eigenvalue multiplicities mimic a higher class (e.g. orthotropic with the 1+2+3 pattern of cubic) is
classified correctly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np

from .backend import as_numpy
from .basis import float_basis
from .kinds import KIND_REQUIRED, TensorKind, get_kind, renamed_keyword, required_kind

__all__ = ["symmetry_class", "SymmetryClass", "ELASTIC_CLASSES", "class_projector", "DEFAULT_CLASS_TOL"]

ELASTIC_CLASSES = ("isotropic", "cubic", "transversely_isotropic", "tetragonal", "trigonal", "orthotropic",
                   "monoclinic", "triclinic")
"""The 8 elastic symmetry classes, from the most to the least symmetric."""

DEFAULT_CLASS_TOL = 1e-2
"""Default relative tolerance ``|C - P_G C|_F / |C|_F`` for accepting a class."""

_LEVELS = (("isotropic",), ("cubic", "transversely_isotropic"), ("tetragonal", "trigonal"), ("orthotropic",),
           ("monoclinic",), ("triclinic",))
_N_GRID = 700
_N_NEIGHBORS = 8
_MAX_AXES = 24


@dataclass(frozen=True, eq=False)
class SymmetryClass:
    """Result of :func:`symmetry_class`.

    Attributes:
        name: one of :data:`ELASTIC_CLASSES`.
        frame: ``(3, 3)`` rotation whose rows are the class's axes ``x', y', z'`` in the input's Cartesian
            frame; ``rotate(C, frame, "elastic")`` is the tensor in the class's standard orientation: ``z'``
            the principal axis (4-fold for cubic/tetragonal, the symmetry axis for transversely isotropic, 3-fold for
            trigonal with a 2-fold axis along ``x'``, the 2-fold axis for monoclinic), orthotropic axes along
            ``x', y', z'``. Identity for isotropic and triclinic.
        residual: relative distance ``|C - C_class|_F / |C|_F`` to the class in that frame.
        residuals: the best relative residual found for every class that was tried.
        axes: ``(n, 3)`` unit two-fold axes found (normals of the symmetry planes), within ``3 tol``.
        projection: ``(3, 3, 3, 3)`` the closest tensor of the class in ``frame`` (input frame).
    """

    name: str
    frame: np.ndarray
    residual: float
    residuals: dict = field(default_factory=dict)
    axes: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))
    projection: np.ndarray | None = None

    @property
    def n_symmetry_planes(self) -> int:
        """Number of symmetry planes (two-fold axes) found; infinite classes report what the grid found."""
        return len(self.axes)


# --------------------------------------------------------------------------------------------------
# constants: Wigner matrices, generators, group projectors, grid


def _rot_axis(axis, angle: float) -> np.ndarray:
    a = np.asarray(axis, dtype=float)
    a = a / np.linalg.norm(a)
    K = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    return np.eye(3) + np.sin(angle) * K + (1 - np.cos(angle)) * K @ K


@lru_cache(maxsize=None)
def _Q() -> np.ndarray:
    return np.asarray(float_basis(get_kind("elastic")))


@lru_cache(maxsize=None)
def _generators() -> np.ndarray:
    """``L_a`` ``(3, 21, 21)``: derivative of ``D(exp(t K_a))`` at ``t = 0`` in the elastic coordinates."""
    Q = _Q()
    out = []
    for a in range(3):
        K = np.zeros((3, 3))
        b, c = (a + 1) % 3, (a + 2) % 3
        K[c, b], K[b, c] = 1.0, -1.0  # K v = e_a x v
        I = np.eye(3)
        G = (np.kron(np.kron(np.kron(K, I), I), I) + np.kron(np.kron(np.kron(I, K), I), I)
             + np.kron(np.kron(np.kron(I, I), K), I) + np.kron(np.kron(np.kron(I, I), I), K))
        out.append(Q @ G @ Q.T)
    L = np.array(out)
    L.setflags(write=False)
    return L


def _rotated_coords(C: np.ndarray, F: np.ndarray) -> np.ndarray:
    """Coordinates of ``rotate(C, F_m)`` for frames ``F`` ``(M, 3, 3)``; ``C`` ``(3, 3, 3, 3)`` -> ``(M, 21)``.

    ``rotate(C, F)`` as a 9x9 matrix is ``(F (x) F) C (F (x) F)^T``: two batched matrix products.
    """
    M = len(F)
    K2 = (F[:, :, None, :, None] * F[:, None, :, None, :]).reshape(M, 9, 9)
    T = K2 @ C.reshape(9, 9) @ np.swapaxes(K2, 1, 2)
    return T.reshape(M, 81) @ _Q().T


def _D_elastic(R: np.ndarray) -> np.ndarray:
    """``D(R)`` ``(M, 21, 21)`` on the elastic coordinates for rotations ``R`` ``(M, 3, 3)``, built in Cartesian
    form (``Q rotate(Q^T e_j)``); the same matrices as ``wigner_D(R, "elastic")`` (tested), kept local so that
    the constants here depend only on the stored basis."""
    Q = _Q()
    M = len(R)
    K2 = (R[:, :, None, :, None] * R[:, None, :, None, :]).reshape(M, 1, 9, 9)
    B = Q.reshape(1, 21, 9, 9)
    T = K2 @ B @ np.swapaxes(K2, -1, -2)  # (M, 21 basis tensors, 9, 9)
    return np.swapaxes(T.reshape(M, 21, 81) @ Q.T, 1, 2)


@lru_cache(maxsize=None)
def _group_generators(name: str) -> tuple:
    z, x = (0, 0, 1), (1, 0, 0)
    table = {
        "cubic": [_rot_axis(z, np.pi / 2), _rot_axis(x, np.pi / 2)],
        "transversely_isotropic": [_rot_axis(z, np.pi / 3), _rot_axis(x, np.pi)],
        "tetragonal": [_rot_axis(z, np.pi / 2), _rot_axis(x, np.pi)],
        "trigonal": [_rot_axis(z, 2 * np.pi / 3), _rot_axis(x, np.pi)],
        "orthotropic": [_rot_axis(z, np.pi), _rot_axis(x, np.pi)],
        "monoclinic": [_rot_axis(z, np.pi)],
    }
    return tuple(table[name])


@lru_cache(maxsize=None)
def class_projector(name: str) -> np.ndarray:
    """Orthogonal projector ``(21, 21)`` onto the elastic coordinates invariant under the class's group in
    its standard frame (see :class:`SymmetryClass`); rank 2, 3, 5, 6, 6, 9, 13, 21 from isotropic to triclinic.
    """
    if name not in ELASTIC_CLASSES:
        raise ValueError(f"unknown elastic symmetry class {name!r}; valid: {', '.join(ELASTIC_CLASSES)}")
    if name == "triclinic":
        P = np.eye(21)
    elif name == "isotropic":
        P = np.zeros((21, 21))
        P[0, 0] = P[1, 1] = 1.0
    else:
        from .crystal_symmetry import group_closure

        P = _D_elastic(group_closure(np.array(_group_generators(name)))).mean(0)
        P = 0.5 * (P + P.T)
    P.setflags(write=False)
    return P


@lru_cache(maxsize=None)
def _grid():
    """Hemisphere grid of axes, their axial neighbours, and ``D^2``, ``D^4`` of the two-fold rotations."""
    i = np.arange(_N_GRID) + 0.5
    zc = i / _N_GRID
    phi = i * np.pi * (3.0 - np.sqrt(5.0))
    r = np.sqrt(1 - zc**2)
    n = np.stack([r * np.cos(phi), r * np.sin(phi), zc], -1)
    cos = np.abs(n @ n.T)
    np.fill_diagonal(cos, -1.0)
    nbr = np.argsort(-cos, axis=1)[:, :_N_NEIGHBORS]
    R = 2.0 * n[:, :, None] * n[:, None, :] - np.eye(3)
    D = _D_elastic(R)
    D2 = D[:, 2:7, 2:7].reshape(_N_GRID, 25).copy()
    D4 = D[:, 12:21, 12:21].reshape(_N_GRID, 81).copy()
    for a in (n, nbr, D2, D4):
        a.setflags(write=False)
    return n, nbr, D2, D4


# --------------------------------------------------------------------------------------------------
# Levenberg-Marquardt on frames


@lru_cache(maxsize=None)
def _hat() -> np.ndarray:
    """``(3, 9)``: ``w @ _hat()`` is the flattened cross-product matrix ``[w]_x``."""
    H = np.zeros((3, 3, 3))
    for a in range(3):
        b, c = (a + 1) % 3, (a + 2) % 3
        H[a, c, b], H[a, b, c] = 1.0, -1.0
    H = H.reshape(3, 9)
    H.setflags(write=False)
    return H


def _rodrigues(w: np.ndarray) -> np.ndarray:
    """``exp([w]_x) = 1 + sin(t)/t K + (1 - cos t)/t^2 K^2`` for ``w`` ``(M, 3)``, ``t = |w|``, ``K = [w]_x``."""
    K = (w @ _hat()).reshape(-1, 3, 3)
    t2 = np.einsum("mi,mi->m", w, w)[:, None, None]
    t = np.sqrt(t2) + 1e-300
    return np.eye(3) + (np.sin(t) / t) * K + ((1.0 - np.cos(t)) / (t2 + 1e-300)) * (K @ K)


def _residual(y: np.ndarray, P: np.ndarray) -> np.ndarray:
    """``|(1 - P) y_m|^2`` for ``y`` ``(M, 21)`` and one projector ``(21, 21)`` or one per row ``(M, 21, 21)``."""
    r = y - (y @ P if P.ndim == 2 else (y[:, None, :] @ P)[:, 0])
    return np.einsum("mi,mi->m", r, r)


@lru_cache(maxsize=None)
def _generators_stacked() -> np.ndarray:
    """``(21, 63)`` with ``y @ G = [L_0 y, L_1 y, L_2 y]`` (concatenated)."""
    L = _generators()
    G = np.ascontiguousarray(L.transpose(2, 0, 1).reshape(21, 63))
    G.setflags(write=False)
    return G


def _refine(C: np.ndarray, F: np.ndarray, P: np.ndarray, iters: int = 12,
            rtol: float = 1e-4, ftol: float = 1e-26, abandon: float = np.inf) -> tuple[np.ndarray, np.ndarray]:
    """Minimize ``|(1 - P_m) D(F_m) x|^2`` over the frames ``F_m`` (batched Levenberg-Marquardt).

    ``P`` is one projector ``(21, 21)`` or one per frame ``(M, 21, 21)``. Stops per frame at a negligible
    squared residual (``ftol`` relative; ``1e-26``: exact symmetry), at a relative decrease below ``rtol`` (a noisy
    tensor's floor), when no descent step is left, or -- from the third iteration on -- when the squared
    relative residual is still above ``abandon`` (a local minimum that is no symmetry). Returns the frames and
    the squared residuals.
    """
    G = _generators_stacked()
    F = np.array(F, dtype=float)
    M = len(F)
    Rp = np.eye(21) - (np.broadcast_to(P, (M, 21, 21)) if P.ndim == 2 else P)  # (M, 21, 21)
    y = _rotated_coords(C, F)
    f = _residual(y, np.eye(21) - Rp)
    lam = np.full(M, 1e-4)
    scale = np.einsum("mi,mi->m", y, y) + 1e-300
    done = f <= ftol * scale
    eye = np.eye(3)
    for it_ in range(iters):
        if it_ >= 2:
            done |= f > abandon * scale
        idx = np.flatnonzero(~done)
        if len(idx) == 0:
            break
        ya, Ra = y[idx], Rp[idx]
        r = (ya[:, None, :] @ Ra)[:, 0]
        J = (ya @ G).reshape(-1, 3, 21) @ Ra  # rows (1 - P) L_a y
        JTJ = J @ np.swapaxes(J, 1, 2)
        g = (J @ r[:, :, None])[..., 0]
        tr = (JTJ[:, 0, 0] + JTJ[:, 1, 1] + JTJ[:, 2, 2])[:, None, None] / 3.0 + 1e-300
        step = -np.linalg.solve(JTJ + (lam[idx, None, None] * tr) * eye, g[..., None])[..., 0]
        Fn = _rodrigues(step) @ F[idx]
        yn = _rotated_coords(C, Fn)
        rn = (yn[:, None, :] @ Ra)[:, 0]
        fn = np.einsum("mi,mi->m", rn, rn)
        fo = f[idx]
        better = fn < fo
        ib = idx[better]
        F[ib], y[ib], f[ib] = Fn[better], yn[better], fn[better]
        lam[ib] = np.maximum(lam[ib] / 10.0, 1e-12)
        lam[idx[~better]] *= 100.0
        # converged: negligible residual, negligible progress, or no descent step left
        done[idx] = (fn <= ftol * scale[idx]) | (better & (fo - fn <= rtol * fo)) | (lam[idx] > 1e4)
    return F, f


def _cross(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.stack([a[..., 1] * b[..., 2] - a[..., 2] * b[..., 1], a[..., 2] * b[..., 0] - a[..., 0] * b[..., 2],
                     a[..., 0] * b[..., 1] - a[..., 1] * b[..., 0]], -1)


def _frames_from_z(z: np.ndarray, x: np.ndarray | None = None) -> np.ndarray:
    """Right-handed frames ``(M, 3, 3)`` with rows ``x, z cross x, z``; ``x`` projected perpendicular to ``z``
    (default: the coordinate axis least aligned with ``z``)."""
    z = z / np.linalg.norm(z, axis=-1, keepdims=True)
    if x is None:
        x = np.eye(3)[np.argmin(np.abs(z), axis=-1)]
    x = x - np.sum(x * z, -1, keepdims=True) * z
    x = x / np.linalg.norm(x, axis=-1, keepdims=True)
    return np.stack([x, _cross(z, x), z], -2)


def _dedupe(vs: np.ndarray, cos_tol: float) -> np.ndarray:
    """Keep the first of every group of axes closer than ``acos(cos_tol)`` (``n`` and ``-n`` are the same axis)."""
    if len(vs) == 0:
        return vs.reshape(0, 3)
    near = np.abs(vs @ vs.T) >= cos_tol
    keep = np.ones(len(vs), dtype=bool)
    for i in range(len(vs)):
        if keep[i]:
            keep[i + 1:] &= ~near[i, i + 1:]
    return vs[keep]


def _two_fold_axes(C: np.ndarray, x: np.ndarray, tol: float) -> np.ndarray:
    n, nbr, D2, D4 = _grid()
    a2 = x[2:12].reshape(2, 5)
    M2 = (a2.T @ a2).ravel()
    y4 = x[12:21]
    M4 = np.outer(y4, y4).ravel()
    q = D2 @ M2 + D4 @ M4
    aniso2 = a2.ravel() @ a2.ravel() + y4 @ y4
    f = aniso2 - q  # = 2 * |(1 - P_C2) x|^2 >= 0
    is_min = np.all(f[:, None] <= f[nbr], axis=1)
    cand = np.flatnonzero(is_min)
    total = x @ x
    # a grid point lies within ~0.06 rad of every axis; there |(1 - P_C2) x| <= 4 * 0.06 * |x_aniso| (+ noise),
    # so minima far above that bound are not two-fold axes (f = 2 |(1 - P_C2) x|^2)
    bound = (0.3 * np.sqrt(aniso2) + 3.0 * tol * np.sqrt(total)) ** 2 * 2.0
    cand = cand[f[cand] <= bound]
    cand = cand[np.argsort(f[cand])][:_MAX_AXES]
    if len(cand) == 0:
        return np.zeros((0, 3))
    F = _frames_from_z(n[cand])
    # coarse refinement: frames are refined again for the class; stop at min(1e-6, tol/10) relative or at the
    # noise floor;
    # candidates still above max(10x the acceptance level, 2 %) after two steps are no axes (LM converges
    # quadratically from the grid's ~3 degrees when the minimum is a true axis)
    F, res = _refine(C, F, class_projector("monoclinic"), iters=8, rtol=1e-2, ftol=min(1e-12, (0.1 * tol) ** 2),
                     abandon=max(30.0 * tol, 0.02) ** 2)
    ok = np.sqrt(np.maximum(res, 0.0) / total) <= 3.0 * tol
    axes = F[ok, 2]
    order = np.argsort(res[ok])
    return _dedupe(axes[order], np.cos(np.radians(1.0)))


def _candidate_frames(axes: np.ndarray) -> np.ndarray:
    """Frames ``(M, 3, 3)``: ``z`` = an axis or a cross product of two, ``x`` = an axis perpendicular to ``z``."""
    i, j = np.triu_indices(len(axes), 1)
    c = _cross(axes[i], axes[j])
    s = np.linalg.norm(c, axis=-1)
    keep = s > np.sin(np.radians(10.0))
    zs = np.concatenate([axes, c[keep] / s[keep, None]])
    zs = _dedupe(zs, np.cos(np.radians(1.0)))
    perp = np.abs(zs @ axes.T) < np.sin(np.radians(3.0))  # (nz, naxes)
    zi, ai = np.nonzero(perp)
    lonely = ~perp.any(1)
    frames = [_frames_from_z(zs[zi], axes[ai])] if len(zi) else []
    if lonely.any():
        frames.append(_frames_from_z(zs[lonely]))
    return np.concatenate(frames)


# --------------------------------------------------------------------------------------------------


@renamed_keyword("symmetrize", "symmetrize_indices")
def symmetry_class(C: Any, kind: str | TensorKind = KIND_REQUIRED, *, tol: float = DEFAULT_CLASS_TOL,
                   symmetrize_indices: bool = False) -> SymmetryClass:
    """Elastic symmetry class (Forte-Vianello) of one stiffness tensor in any orientation.

    Args:
        C: ``(3, 3, 3, 3)`` Cartesian or ``(6, 6)`` Voigt stiffness (numpy, torch or pymatgen), any orientation.
        tol: relative tolerance: the class returned is the most symmetric one whose closest tensor (in the
            frame found) is within ``tol * |C|_F`` of ``C``. Noise of relative size well below ``tol`` does not
            lower the class; anisotropy below ``tol`` is not seen.
        kind: ``"elastic"`` (``"stiffness"``) or ``"compliance"`` (same symmetry classes; the kind fixes the
            factors of a Voigt input). Required; leaving it out still means ``"elastic"`` with a
            DeprecationWarning (removed in the next release).
        symmetrize_indices: accept tensors lacking the index symmetry ``C_ijkl = C_jikl = C_klij`` (projected).

    Returns:
        :class:`SymmetryClass` with the class name, the symmetry frame, residuals and found two-fold axes.

    Raises:
        ValueError: a non-elastic kind, a batch (call per tensor), non-positive ``tol``, or bad input.
        TypeError: a number in place of ``kind`` (``tol`` is keyword-only: ``symmetry_class(C, kind, tol=...)``).
    """
    if isinstance(kind, (int, float, np.number)) and not isinstance(kind, bool):
        raise TypeError(
            f"symmetry_class(C, kind, *, tol=...): tol is keyword-only; got the number {kind!r} in place of kind"
        )
    kind = required_kind(kind, "symmetry_class(C, kind)")
    k = get_kind(kind)
    if k.formula != "ijkl=jikl=klij":
        raise ValueError(
            f"symmetry_class is defined for elastic tensors (kind 'elastic' or 'compliance'), not {kind!r}; "
            "for other kinds use symmetry_residual with the candidate point group"
        )
    if not (isinstance(tol, (int, float)) and np.isfinite(tol) and 0 < tol < 1):
        raise ValueError(f"tol must be a number in (0, 1), got {tol!r}")
    from .decomposition import compose, decompose

    x = np.asarray(decompose(as_numpy(C), k.name, symmetrize_indices=symmetrize_indices), dtype=np.float64)
    if x.shape != (21,):
        raise ValueError(f"symmetry_class takes one tensor ((3,3,3,3) or (6,6)), got batch shape {x.shape[:-1]}")
    Cs = np.asarray(compose(x, "elastic"))
    total = float(x @ x)
    eye = np.eye(3)
    if total == 0.0:
        return SymmetryClass("isotropic", eye, 0.0, {"isotropic": 0.0}, np.zeros((0, 3)), Cs)
    norm = np.sqrt(total)
    residuals: dict[str, float] = {}
    iso = float(np.linalg.norm(x[2:]) / norm)
    residuals["isotropic"] = iso
    if iso <= tol:
        xi = np.zeros(21)
        xi[:2] = x[:2]
        return SymmetryClass("isotropic", eye, iso, residuals, np.zeros((0, 3)), np.asarray(compose(xi, "elastic")))
    axes = _two_fold_axes(Cs, x, tol)
    if len(axes) == 0:
        return SymmetryClass("triclinic", eye, 0.0, residuals, axes, Cs)
    frames = _candidate_frames(axes)
    y = _rotated_coords(Cs, frames)
    for level in _LEVELS[1:-1]:
        # unrefined residuals in all candidate frames; refine the 2 best frames of every class that is close
        todo, Ps, Fs = [], [], []
        for name in level:
            P = class_projector(name)
            r = np.sqrt(np.maximum(_residual(y, P), 0.0)) / norm
            order = np.argsort(r)[:2]
            residuals[name] = float(r[order[0]])
            if r[order[0]] <= 10.0 * tol + 1e-3:
                todo += [name] * len(order)
                Ps.append(np.broadcast_to(P, (len(order), 21, 21)))
                Fs.append(frames[order])
        if not todo:
            continue
        Fr, fr = _refine(Cs, np.concatenate(Fs), np.concatenate(Ps))
        rr = np.sqrt(np.maximum(fr, 0.0)) / norm
        for name in set(todo):
            sel = [i for i, t in enumerate(todo) if t == name]
            residuals[name] = min(residuals[name], float(rr[sel].min()))
        j = int(np.argmin(rr))
        if rr[j] <= tol:
            name, F, P = todo[j], Fr[j], class_projector(todo[j])
            yF = _rotated_coords(Cs, F[None])[0]
            # the projection, composed in the class frame and rotated back to the input frame
            proj = _rotated_coords(np.asarray(compose(yF @ P, "elastic")), F.T[None])[0]
            return SymmetryClass(name, F, float(rr[j]), residuals, axes, np.asarray(compose(proj, "elastic")))
    return SymmetryClass("triclinic", eye, 0.0, residuals, axes, Cs)


"""Error metrics for predicted crystal tensors (the single place they are defined).

Every evaluation path (``evaluate``, ``benchmarks/ml.py``, tests, plots) calls this module so that
numbers are comparable across runs and with the MatTen baseline.

Definitions (``N`` samples; ``pred``/``true`` are full Cartesian tensors of shape ``(N, 3, 3)``,
``(N, 3, 3, 3)`` or ``(N, 3, 3, 3, 3)``; units are those of the data: elastic GPa, dielectric
dimensionless, piezoelectric C/m^2):

* ``mae`` -- component MAE, mean of ``|pred - true|`` over all samples and all Cartesian components
  (81 for elastic, 27 for piezoelectric, 9 for dielectric).
* ``frobenius_mae`` -- mean over samples of ``||pred - true||_F`` of the full Cartesian tensor
  (for elastic: over all 81 components of ``C_ijkl``, in GPa; MatTen's "Frobenius error").
* ``rel_frobenius`` -- mean over samples of the relative Frobenius error
  ``||pred - true||_F / max(||true||_F, floor)``.
* ``ewt25``, ``ewt10``, ``ewt5`` -- "energy within threshold": share (0..1) of samples whose relative
  Frobenius error is strictly below 25 %, 10 %, 5 %.
* ``ewt25_above_floor`` ... -- the same, restricted to samples with ``||true||_F >= floor``
  (``n_above_floor`` says how many); NaN when no sample is above the floor.
* ``block_mae/<name>`` -- MAE of the irrep coefficients of one irrep block (see :func:`irrep_blocks`
  for the names, e.g. ``0e[0]``, ``0e[1]``, ``2e[0]``, ``4e``). Because the irrep basis is orthonormal
  these are in the tensor's own units.
* Derived scalars (MAE over samples, in the tensor's units): elastic ``K_VRH``, ``G_VRH`` and
  Young's modulus ``Y_VRH = 9 K G / (3 K + G)`` (GPa, Voigt-Reuss-Hill); dielectric
  ``mean_eigenvalue`` (= trace / 3); piezoelectric ``max_abs_e`` (= max_ij |e_ij| of the 3x6 Voigt
  matrix = max_ijk |e_ijk|, since ``e_iJ = e_ijk`` without factors).

Further metrics, per property (:func:`tensor_metrics` adds them):

* dielectric (the total, not a part): ``n_eigenvalue_below_1`` -- predictions with an eigenvalue
  below 1 (unphysical for a static dielectric tensor); for the electronic part
  :func:`refractive_index_metrics` gives ``refractive_index_mae`` with ``n = sqrt(trace / 3)``.
* elastic: ``n_not_positive_definite`` (predictions whose Mandel matrix has an eigenvalue <= 0:
  not Born-stable) and the Zener ratio ``A = 2 C44 / (C11 - C12)`` on samples whose TRUE tensor
  has cubic form in the data frame (:func:`zener_metrics`: ``zener_n``, ``zener_mae``,
  ``zener_mae_guess_1`` for the isotropic guess A = 1, ``zener_n_pred_isotropic``).
* piezoelectric, sign-free (a polar axis of opposite sign flips the whole tensor):
  :func:`piezo_sign_free_metrics`.

Near-zero targets. Many piezoelectric tensors are (numerically) zero, and a plain relative error
``||pred - true|| / ||true||`` would explode for them. We therefore divide by
``max(||true||_F, floor)`` with a per-property floor (:data:`RELATIVE_ERROR_FLOORS`: piezoelectric
0.1 C/m^2, dielectric 1, elastic 1 GPa), i.e. for targets smaller than the floor the relative error
becomes an absolute error measured in units of the floor. Because this makes EwT on near-zero
targets a statement about absolute accuracy, EwT is additionally reported restricted to the samples
whose target norm is at least the floor (``ewt*_above_floor``); for elastic and dielectric data this
restriction is normally empty (all targets are well above the floor) and the two numbers coincide.

All functions are vectorized over the leading sample axis, take numpy arrays or torch tensors
(converted to float64 numpy) and return numpy arrays / Python floats.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

import irreptensor as it
from irreptensor_ml.deprecation import renamed

PROPERTIES: tuple[str, ...] = ("dielectric", "piezoelectric", "elastic")
"""Property (tensor kind) names understood by this module."""

TENSOR_RANK: dict[str, int] = {"dielectric": 2, "piezoelectric": 3, "elastic": 4}
"""Cartesian rank of each property's tensor."""

PARTS: dict[str, tuple[str, ...]] = {"dielectric": ("electronic", "ionic")}
"""Additive parts of a property's tensor kept from the data files (``tensor_<part>`` keys):
dielectric ``eps = eps_electronic + eps_ionic`` (DFPT, both dimensionless)."""


def part_key(property: str, part: str) -> str:
    """Target key of one part of a property, e.g. ``"dielectric_electronic"``."""
    return f"{property}_{part}"

RELATIVE_ERROR_FLOORS: dict[str, float] = {"dielectric": 1.0, "piezoelectric": 0.1, "elastic": 1.0}
"""Lower bound of the denominator of relative errors, in the property's units (see module doc)."""

EWT_THRESHOLDS: tuple[float, ...] = (0.25, 0.10, 0.05)
"""Relative Frobenius error thresholds for EwT (reported as ``ewt25``, ``ewt10``, ``ewt5``)."""

DERIVED_SCALARS: dict[str, tuple[str, ...]] = {
    "elastic": ("K_VRH", "G_VRH", "Y_VRH"),
    "dielectric": ("mean_eigenvalue",),
    "piezoelectric": ("max_abs_e",),
}
"""Names of the derived scalar properties computed by :func:`derived_scalars`, per property."""

DERIVED_UNITS: dict[str, str] = {
    "K_VRH": "GPa",
    "G_VRH": "GPa",
    "Y_VRH": "GPa",
    "mean_eigenvalue": "",
    "max_abs_e": "C/m^2",
}
"""Units of the derived scalars (empty string: dimensionless)."""

TENSOR_UNITS: dict[str, str] = {"elastic": "GPa", "dielectric": "", "piezoelectric": "C/m^2"}
"""Units of each property's tensor components."""


def check_property(property: str) -> str:
    """Return ``property`` unchanged, or raise ``ValueError`` naming it if it is not known."""
    if property not in TENSOR_RANK:
        raise ValueError(
            f"unknown property {property!r}; expected one of {', '.join(PROPERTIES)}"
        )
    return property


def as_numpy(x: Any) -> np.ndarray:
    """Convert a numpy array, torch tensor or nested sequence to a float64 numpy array."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # torch.Tensor without importing torch
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def _as_cartesian_batch(x: Any, property: str, name: str) -> np.ndarray:
    """Return ``x`` as a ``(N, 3, ..., 3)`` float64 batch; a single tensor gets ``N = 1``."""
    arr = as_numpy(x)
    rank = TENSOR_RANK[property]
    shape = (3,) * rank
    if arr.shape == shape:
        arr = arr[None]
    if arr.ndim != rank + 1 or arr.shape[1:] != shape:
        raise ValueError(
            f"{name}: expected a Cartesian {property} tensor batch of shape (N, {', '.join(['3'] * rank)}), "
            f"got shape {arr.shape}"
        )
    return arr


def irrep_blocks(irreps: str) -> list[tuple[str, slice]]:
    """Split an irreps string into named blocks of consecutive coefficients.

    Each copy of an irrep is one block. A block is named by its irrep (``"0e"``, ``"1o"`` ...); when
    the irrep occurs more than once in the whole string the copies are numbered in order of
    appearance: ``"2x0e+2x2e+1x4e"`` -> ``0e[0]`` (0:1), ``0e[1]`` (1:2), ``2e[0]`` (2:7),
    ``2e[1]`` (7:12), ``4e`` (12:21).

    Args:
        irreps: e3nn-style irreps string such as ``"2x1o+1x2o+1x3o"``.

    Returns:
        List of ``(name, slice)`` in order; the slices tile ``0:dim``.
    """
    terms: list[tuple[int, str, int]] = []
    for term in irreps.replace(" ", "").split("+"):
        mul_str, sep, ir = term.partition("x")
        if not sep:
            mul_str, ir = "1", term
        try:
            mul = int(mul_str)
            l = int(ir[:-1])
        except ValueError:
            raise ValueError(f"irreps: cannot parse term {term!r} of {irreps!r}") from None
        if ir[-1] not in "eo" or mul < 0 or l < 0:
            raise ValueError(f"irreps: cannot parse term {term!r} of {irreps!r}")
        terms.append((mul, ir, 2 * l + 1))
    totals: dict[str, int] = {}
    for mul, ir, _ in terms:
        totals[ir] = totals.get(ir, 0) + mul
    seen: dict[str, int] = {}
    blocks: list[tuple[str, slice]] = []
    start = 0
    for mul, ir, d in terms:
        for _ in range(mul):
            k = seen.get(ir, 0)
            seen[ir] = k + 1
            name = f"{ir}[{k}]" if totals[ir] > 1 else ir
            blocks.append((name, slice(start, start + d)))
            start += d
    return blocks


def per_block_mae(pred_irreps: Any, true_irreps: Any, irreps: str) -> dict[str, float]:
    """MAE of the irrep coefficients of each block named by :func:`irrep_blocks`.

    Args:
        pred_irreps, true_irreps: ``(N, dim)`` irrep coefficients (physical units, not normalized).
        irreps: irreps string describing the ``dim`` axis.

    Returns:
        ``{block name: MAE}``.
    """
    p, t = as_numpy(pred_irreps), as_numpy(true_irreps)
    blocks = irrep_blocks(irreps)
    dim = blocks[-1][1].stop if blocks else 0
    for name, arr in (("pred_irreps", p), ("true_irreps", t)):
        if arr.ndim != 2 or arr.shape[1] != dim:
            raise ValueError(f"{name}: expected shape (N, {dim}) for irreps {irreps!r}, got {arr.shape}")
    if p.shape != t.shape:
        raise ValueError(f"pred_irreps shape {p.shape} != true_irreps shape {t.shape}")
    err = np.abs(p - t)
    return {name: float(err[:, sl].mean()) if len(err) else float("nan") for name, sl in blocks}


def frobenius_norm(x: Any) -> np.ndarray:
    """Frobenius norm of each tensor of a ``(N, 3, ..., 3)`` batch -> ``(N,)``."""
    arr = as_numpy(x)
    return np.sqrt((arr.reshape(arr.shape[0], -1) ** 2).sum(axis=1))


def relative_frobenius_error(pred: Any, true: Any, floor: float) -> np.ndarray:
    """``||pred - true||_F / max(||true||_F, floor)`` per sample -> ``(N,)``.

    Args:
        pred, true: Cartesian tensor batches of equal shape ``(N, 3, ..., 3)``.
        floor: positive lower bound of the denominator (see module doc on near-zero targets).
    """
    if not floor > 0:
        raise ValueError(f"floor must be positive, got {floor!r}")
    p, t = as_numpy(pred), as_numpy(true)
    if p.shape != t.shape:
        raise ValueError(f"pred shape {p.shape} != true shape {t.shape}")
    return frobenius_norm(p - t) / np.maximum(frobenius_norm(t), floor)


def ewt(rel_err: Any, threshold: float) -> float:
    """Share (0..1) of samples whose relative error is strictly below ``threshold``; NaN if empty."""
    r = as_numpy(rel_err).reshape(-1)
    if r.size == 0:
        return float("nan")
    return float(np.mean(r < threshold))


def vrh_moduli_table(elastic: Any) -> dict[str, np.ndarray]:
    """Voigt-Reuss-Hill bulk, shear and Young's moduli of elastic tensors, as a table of columns.

    Unlike the core's ``irreptensor.vrh_moduli(C)`` (an ``ElasticModuli``, raising on a singular
    stiffness) this gives plain columns keyed like :data:`DERIVED_SCALARS`, adds Young's modulus and
    marks a singular stiffness NaN, so a batch of predictions never raises.

    Voigt bounds from the 6x6 stiffness ``C``; Reuss bounds from the 6x6 compliance
    ``S = inv(C)`` (the inverse of the Voigt stiffness already is the Voigt compliance, with the
    factors 2 and 4 on shear entries):

    * ``K_V = [(C11+C22+C33) + 2 (C12+C13+C23)] / 9``
    * ``G_V = [(C11+C22+C33) - (C12+C13+C23) + 3 (C44+C55+C66)] / 15``
    * ``K_R = 1 / [(S11+S22+S33) + 2 (S12+S13+S23)]``
    * ``G_R = 15 / [4 (S11+S22+S33) - 4 (S12+S13+S23) + 3 (S44+S55+S66)]``
    * ``K_VRH = (K_V + K_R) / 2``, ``G_VRH = (G_V + G_R) / 2``, ``Y_VRH = 9 K G / (3 K + G)``.

    These match ``pymatgen.analysis.elasticity.ElasticTensor`` ``k_vrh``, ``g_vrh`` and
    ``y_mod / 1e9`` (pymatgen returns Young's modulus in Pa).

    Args:
        elastic: ``(N, 3, 3, 3, 3)`` or ``(3, 3, 3, 3)`` Cartesian ``C_ijkl`` (GPa).

    Returns:
        dict with ``K_V, K_R, K_VRH, G_V, G_R, G_VRH, Y_VRH``, each ``(N,)`` in GPa. A singular
        stiffness gives NaN Reuss (and VRH) values for that sample instead of raising.
    """
    C = as_numpy(it.to_voigt(_as_cartesian_batch(elastic, "elastic", "elastic"), "elastic"))
    n = C.shape[0]
    S = np.full_like(C, np.nan)
    det = np.linalg.det(C) if n else np.zeros(0)
    ok = np.isfinite(det) & (np.abs(det) > 0)
    if ok.any():
        S[ok] = np.linalg.inv(C[ok])

    def sums(M: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        diag = M[:, 0, 0] + M[:, 1, 1] + M[:, 2, 2]
        off = M[:, 0, 1] + M[:, 0, 2] + M[:, 1, 2]
        shear = M[:, 3, 3] + M[:, 4, 4] + M[:, 5, 5]
        return diag, off, shear

    a, b, c = sums(C)
    k_v = (a + 2 * b) / 9.0
    g_v = (a - b + 3 * c) / 15.0
    sa, sb, sc = sums(S)
    with np.errstate(divide="ignore", invalid="ignore"):
        k_r = 1.0 / (sa + 2 * sb)
        g_r = 15.0 / (4 * sa - 4 * sb + 3 * sc)
        k = (k_v + k_r) / 2
        g = (g_v + g_r) / 2
        y = 9 * k * g / (3 * k + g)
    return {"K_V": k_v, "K_R": k_r, "K_VRH": k, "G_V": g_v, "G_R": g_r, "G_VRH": g, "Y_VRH": y}


def derived_scalars(tensor: Any, property: str) -> dict[str, np.ndarray]:
    """Derived scalar properties of a batch of Cartesian tensors (names in :data:`DERIVED_SCALARS`).

    * elastic: ``K_VRH``, ``G_VRH``, ``Y_VRH`` (GPa, see :func:`vrh_moduli_table`);
    * dielectric: ``mean_eigenvalue`` = trace / 3 (exact for the symmetric tensor);
    * piezoelectric: ``max_abs_e`` = max |e_ijk| (C/m^2) = max |e_iJ| of the Voigt 3x6 matrix.

    Args:
        tensor: ``(N, 3, ..., 3)`` or a single ``(3, ..., 3)`` Cartesian tensor.
        property: ``"elastic"``, ``"dielectric"`` or ``"piezoelectric"``.

    Returns:
        ``{name: (N,) array}``.
    """
    check_property(property)
    T = _as_cartesian_batch(tensor, property, "tensor")
    if property == "elastic":
        m = vrh_moduli_table(T)
        return {k: m[k] for k in DERIVED_SCALARS["elastic"]}
    if property == "dielectric":
        return {"mean_eigenvalue": np.trace(T, axis1=1, axis2=2) / 3.0}
    return {"max_abs_e": np.abs(T.reshape(T.shape[0], -1)).max(axis=1) if len(T) else np.zeros(0)}


def tensor_metrics(
    pred: Any,
    true: Any,
    property: str,
    *,
    pred_irreps: Any | None = None,
    true_irreps: Any | None = None,
    floor: float | None = None,
    thresholds: Sequence[float] = EWT_THRESHOLDS,
    part: str | None = None,
) -> dict[str, float]:
    """All metrics of the module docstring for one property, as a flat ``{name: float}`` dict.

    Args:
        pred, true: Cartesian tensor batches ``(N, 3, ..., 3)`` in physical units.
        property: ``"elastic"``, ``"dielectric"`` or ``"piezoelectric"``.
        pred_irreps, true_irreps: optional ``(N, dim)`` irrep coefficients; computed with
            ``irreptensor.decompose`` from ``pred``/``true`` when omitted.
        floor: denominator floor for relative errors; default :data:`RELATIVE_ERROR_FLOORS`.
        thresholds: EwT thresholds (fractions); key ``ewt{round(100 t)}``.

    Returns:
        ``n``, ``mae``, ``frobenius_mae``, ``rel_frobenius``, ``ewt25`` ..., ``n_above_floor``,
        ``ewt25_above_floor`` ..., ``block_mae/<block>`` and ``<scalar>_mae`` for each derived
        scalar. Elastic samples whose VRH moduli are NaN (singular predicted or true stiffness)
        are left out of the ``*_VRH_mae`` values and counted in ``<scalar>_n_invalid``.
    """
    check_property(property)
    floor = RELATIVE_ERROR_FLOORS[property] if floor is None else float(floor)
    p = _as_cartesian_batch(pred, property, "pred")
    t = _as_cartesian_batch(true, property, "true")
    if p.shape != t.shape:
        raise ValueError(f"pred shape {p.shape} != true shape {t.shape}")
    n = p.shape[0]
    if n == 0:
        raise ValueError("tensor_metrics: got zero samples")

    out: dict[str, float] = {"n": float(n)}
    diff = p - t
    out["mae"] = float(np.abs(diff).mean())
    err = frobenius_norm(diff)
    out["frobenius_mae"] = float(err.mean())
    tnorm = frobenius_norm(t)
    rel = err / np.maximum(tnorm, floor)
    out["rel_frobenius"] = float(rel.mean())
    above = tnorm >= floor
    out["n_above_floor"] = float(above.sum())
    for thr in thresholds:
        key = f"ewt{round(100 * thr)}"
        out[key] = ewt(rel, thr)
        out[f"{key}_above_floor"] = ewt(rel[above], thr)

    pi = as_numpy(it.decompose(p, property)) if pred_irreps is None else as_numpy(pred_irreps)
    ti = as_numpy(it.decompose(t, property)) if true_irreps is None else as_numpy(true_irreps)
    for name, value in per_block_mae(pi, ti, it.irreps(property)).items():
        out[f"block_mae/{name}"] = value

    dp, dt = derived_scalars(p, property), derived_scalars(t, property)
    for name in DERIVED_SCALARS[property]:
        e = np.abs(dp[name] - dt[name])
        valid = np.isfinite(e)
        out[f"{name}_mae"] = float(e[valid].mean()) if valid.any() else float("nan")
        if property == "elastic":  # only the Reuss bound (a matrix inverse) can fail
            out[f"{name}_n_invalid"] = float((~valid).sum())
    if property == "dielectric" and part is None:
        out["n_eigenvalue_below_1"] = float((np.linalg.eigvalsh(p).min(axis=1) < 1.0).sum())
    elif property == "elastic":
        out["n_not_positive_definite"] = float((_mandel_eigenvalues(p).min(axis=1) <= 0.0).sum())
        out.update(zener_metrics(p, t))
    elif property == "piezoelectric":
        out.update(piezo_sign_free_metrics(p, t, floor=floor))
    return out


def refractive_index(eps_electronic: Any) -> np.ndarray:
    """``(N,)`` refractive index ``n = sqrt(mean eigenvalue) = sqrt(trace / 3)`` of electronic
    (high-frequency) dielectric tensors ``(N, 3, 3)`` (the isotropic average; NaN if trace < 0)."""
    e = _as_cartesian_batch(eps_electronic, "dielectric", "eps_electronic")
    tr = np.trace(e, axis1=1, axis2=2) / 3.0
    with np.errstate(invalid="ignore"):
        return np.sqrt(tr)


def refractive_index_metrics(pred: Any, true: Any) -> dict[str, float]:
    """``{"refractive_index_mae": float}`` of electronic dielectric tensors ``(N, 3, 3)``
    (:func:`refractive_index`; samples with a negative trace are left out)."""
    n_p, n_t = refractive_index(pred), refractive_index(true)
    return {"refractive_index_mae": float(np.nanmean(np.abs(n_p - n_t)))}


def _mandel_eigenvalues(C: np.ndarray) -> np.ndarray:
    return np.linalg.eigvalsh(np.asarray(it.to_mandel(C, "elastic"), dtype=np.float64))


#: relative tolerance of "cubic form in the data frame" for :func:`zener_metrics`.
CUBIC_FORM_RTOL = 1e-2
#: |A - 1| below which a predicted tensor counts as isotropic.
ISOTROPIC_ZENER_ATOL = 1e-2


def cubic_form(C: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(is_cubic (N,) bool, zener (N,))``: whether each elastic tensor has cubic form in its
    own frame (C11=C22=C33, C12=C13=C23, C44=C55=C66, other Voigt entries 0, within
    :data:`CUBIC_FORM_RTOL` of ``||C||``) and its Zener ratio ``2 C44 / (C11 - C12)`` of the
    cubic averages (computed for every sample)."""
    V = np.asarray(it.to_voigt(_as_cartesian_batch(C, "elastic", "C"), "elastic"), dtype=np.float64)
    c11 = (V[:, 0, 0] + V[:, 1, 1] + V[:, 2, 2]) / 3
    c12 = (V[:, 0, 1] + V[:, 0, 2] + V[:, 1, 2]) / 3
    c44 = (V[:, 3, 3] + V[:, 4, 4] + V[:, 5, 5]) / 3
    cubic = np.zeros_like(V)
    for i in range(3):
        cubic[:, i, i], cubic[:, i + 3, i + 3] = c11, c44
        for j in range(3):
            if i != j:
                cubic[:, i, j] = c12
    resid = np.linalg.norm((V - cubic).reshape(len(V), -1), axis=1)
    norm = np.linalg.norm(V.reshape(len(V), -1), axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        zener = 2 * c44 / (c11 - c12)
    return resid <= CUBIC_FORM_RTOL * np.maximum(norm, 1e-300), zener


def zener_metrics(pred: Any, true: Any) -> dict[str, float]:
    """Zener-ratio errors on the samples whose true tensor has cubic form (:func:`cubic_form`):
    ``zener_n``, ``zener_mae``, ``zener_mae_guess_1`` (error of guessing A = 1, isotropy),
    ``zener_n_pred_isotropic`` / ``zener_n_true_isotropic`` (|A - 1| < :data:`ISOTROPIC_ZENER_ATOL`).
    NaN errors when no sample is cubic."""
    is_cubic, a_true = cubic_form(true)
    _, a_pred = cubic_form(pred)
    a_true, a_pred = a_true[is_cubic], a_pred[is_cubic]
    nan = float("nan")
    return {
        "zener_n": float(is_cubic.sum()),
        "zener_mae": float(np.abs(a_pred - a_true).mean()) if is_cubic.any() else nan,
        "zener_mae_guess_1": float(np.abs(1.0 - a_true).mean()) if is_cubic.any() else nan,
        "zener_n_pred_isotropic": float((np.abs(a_pred - 1) < ISOTROPIC_ZENER_ATOL).sum()),
        "zener_n_true_isotropic": float((np.abs(a_true - 1) < ISOTROPIC_ZENER_ATOL).sum()),
    }


def _sphere_directions(n: int = 2000) -> np.ndarray:
    """``(n + 3, 3)`` unit vectors: a Fibonacci grid on the upper hemisphere (``z >= 0``) plus the
    three Cartesian axes (where crystal-frame tensors often peak)."""
    k = np.arange(n) + 0.5
    z = k / n
    phi = np.pi * (1 + 5 ** 0.5) * k
    r = np.sqrt(1 - z ** 2)
    return np.concatenate([np.stack([r * np.cos(phi), r * np.sin(phi), z], axis=1), np.eye(3)])


def max_longitudinal(e: Any, directions: int = 2000) -> np.ndarray:
    """``(N,)`` largest longitudinal piezoelectric coefficient ``max_n |e_ijk n_i n_j n_k|`` (C/m^2)
    over unit directions ``n`` (a hemisphere grid suffices: the value is odd in ``n``); invariant
    under rotations and under the sign of the tensor."""
    T = _as_cartesian_batch(e, "piezoelectric", "e")
    n = _sphere_directions(directions)
    cubic = np.einsum("gi,gj,gk->gijk", n, n, n).reshape(len(n), 27)
    return np.abs(T.reshape(len(T), 27) @ cubic.T).max(axis=1) if len(T) else np.zeros(0)


def spearman(a: Any, b: Any) -> float:
    """Spearman rank correlation of two ``(N,)`` arrays (average ranks for ties; NaN if N < 2 or
    either is constant)."""
    from scipy.stats import spearmanr

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if len(a) < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(spearmanr(a, b).statistic)


def piezo_sign_free_metrics(pred: Any, true: Any, *, floor: float | None = None) -> dict[str, float]:
    """Metrics of piezoelectric predictions that do not depend on the tensor's overall sign (the
    sign of a polar axis in the labels: see the data README) -- all rotation invariant:

    * ``norm_mae`` and ``norm_spearman``: of ``||e||_F`` (C/m^2);
    * ``block_norm_mae/<block>``: MAE of the norm of each irrep block (``1o[0]``, ``1o[1]``, ``2o``, ``3o``);
    * ``max_longitudinal_mae`` and ``max_longitudinal_spearman``: :func:`max_longitudinal`;
    * ``frobenius_mae_sign_free``: mean of ``min(||pred - true||, ||pred + true||)``;
    * ``sign_agreement``: share of samples with ``||true|| >= floor`` for which ``pred`` is closer to
      ``true`` than to ``-true`` (0.5 when the sign is a coin flip; NaN without such samples).
    """
    floor = RELATIVE_ERROR_FLOORS["piezoelectric"] if floor is None else float(floor)
    p = _as_cartesian_batch(pred, "piezoelectric", "pred")
    t = _as_cartesian_batch(true, "piezoelectric", "true")
    out: dict[str, float] = {}
    np_, nt = frobenius_norm(p), frobenius_norm(t)
    out["norm_mae"] = float(np.abs(np_ - nt).mean())
    out["norm_spearman"] = spearman(np_, nt)
    pi, ti = as_numpy(it.decompose(p, "piezoelectric")), as_numpy(it.decompose(t, "piezoelectric"))
    for name, sl in irrep_blocks(it.irreps("piezoelectric")):
        out[f"block_norm_mae/{name}"] = float(
            np.abs(np.linalg.norm(pi[:, sl], axis=1) - np.linalg.norm(ti[:, sl], axis=1)).mean()
        )
    lp, lt = max_longitudinal(p), max_longitudinal(t)
    out["max_longitudinal_mae"] = float(np.abs(lp - lt).mean())
    out["max_longitudinal_spearman"] = spearman(lp, lt)
    minus, plus = frobenius_norm(p - t), frobenius_norm(p + t)
    out["frobenius_mae_sign_free"] = float(np.minimum(minus, plus).mean())
    big = nt >= floor
    out["sign_agreement"] = float((minus[big] < plus[big]).mean()) if big.any() else float("nan")
    return out


def format_metrics_table(metrics: Mapping[str, Mapping[str, float]]) -> str:
    """Render ``{property: tensor_metrics(...)}`` as a Markdown table (one row per metric)."""
    props = list(metrics)
    names: list[str] = []
    for prop in props:
        for k in metrics[prop]:
            if k not in names:
                names.append(k)
    lines = ["| metric | " + " | ".join(props) + " |", "|---|" + "---|" * len(props)]
    for k in names:
        cells = []
        for prop in props:
            v = metrics[prop].get(k)
            cells.append("" if v is None else f"{v:.4g}")
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# Old name, for one release (a DeprecationWarning names the new one): ``vrh_moduli`` is the core's
# ``irreptensor.vrh_moduli(C) -> ElasticModuli``, another contract.
vrh_moduli = renamed(vrh_moduli_table, "vrh_moduli", "irreptensor.vrh_moduli returns ElasticModuli")

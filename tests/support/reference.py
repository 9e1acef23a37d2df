"""Independent float64 NumPy reference implementations of the cfal loss heads.

Written from the papers' formulas (not from the library code) and used by
``tests/heads/test_heads_reference.py`` to check values and gradients of the
TensorFlow heads.  Everything here works on float64 arrays; every loss
function returns the per-example loss, shape [N].

Notation: ``x`` embeddings [N, D], ``y`` integer labels [N], ``W``
prototypes [C, D] (or [C, m, D] for the multi-centre affinity heads and
[C, K, D] for sub-center ArcFace).
"""

from __future__ import annotations

import numpy as np


def f64(a) -> np.ndarray:
    return np.asarray(a, dtype=np.float64)


# --------------------------------------------------------------------------
# generic helpers
# --------------------------------------------------------------------------

def log_softmax(z: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax, shifted by the row max for stability."""
    z = f64(z)
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def softmax(z: np.ndarray) -> np.ndarray:
    return np.exp(log_softmax(z))


def cross_entropy(logits: np.ndarray, y: np.ndarray) -> np.ndarray:
    """-log softmax(logits)[i, y_i], shape [N]."""
    y = np.asarray(y)
    return -log_softmax(logits)[np.arange(len(y)), y]


def numerical_grad(f, x: np.ndarray, eps: float) -> np.ndarray:
    """Central finite differences of the scalar function ``f`` at ``x``.

    (f(x + eps e_k) - f(x - eps e_k)) / (2 eps) for every entry k of ``x``;
    returns an array of ``x``'s shape.  ``x`` itself is left unchanged.
    """
    x = f64(x).copy()
    grad = np.zeros_like(x)
    flat = x.reshape(-1)
    gflat = grad.reshape(-1)
    for k in range(flat.size):
        old = flat[k]
        flat[k] = old + eps
        fp = float(f(x))
        flat[k] = old - eps
        fm = float(f(x))
        flat[k] = old
        gflat[k] = (fp - fm) / (2.0 * eps)
    return grad


# --------------------------------------------------------------------------
# linear softmax and focal loss
# --------------------------------------------------------------------------

def linear_logits(x, W, b=None) -> np.ndarray:
    """x W^T + b with W [C, D] (one prototype / weight row per class)."""
    z = f64(x) @ f64(W).T
    if b is not None:
        z = z + f64(b)[None, :]
    return z


def softmax_loss(x, y, W, b=None) -> np.ndarray:
    return cross_entropy(linear_logits(x, W, b), y)


def class_balanced_weights(class_counts, beta: float) -> np.ndarray:
    """Cui et al. 2019: w_c = (1 - beta) / (1 - beta^{n_c}), sum(w) = C."""
    n = f64(class_counts)
    w = (1.0 - beta) / (1.0 - np.power(beta, n))
    return w * (len(n) / w.sum())


def focal_loss(x, y, W, b=None, gamma: float = 2.0, alpha=None) -> np.ndarray:
    """Lin et al. 2017: -a_y (1 - p_y)^gamma log p_y on linear logits."""
    y = np.asarray(y)
    logp_y = log_softmax(linear_logits(x, W, b))[np.arange(len(y)), y]
    one_minus_p = -np.expm1(logp_y)          # 1 - p_y without cancellation
    a = np.ones(np.shape(W)[0]) if alpha is None else f64(alpha)
    return -a[y] * np.power(one_minus_p, gamma) * logp_y


# --------------------------------------------------------------------------
# combined angular margin (ArcFace / CosFace / SphereFace)
# --------------------------------------------------------------------------

def l2_normalize_rows(a) -> np.ndarray:
    """Rows divided by their norm; a zero row stays zero."""
    a = f64(a)
    n = np.linalg.norm(a, axis=-1, keepdims=True)
    return np.divide(a, n, out=np.zeros_like(a), where=n > 0)


def cosines(x, W) -> np.ndarray:
    """cos_ij = <x_i/||x_i||, w_j/||w_j||>, [N, C] (0 for zero vectors)."""
    c = l2_normalize_rows(x) @ l2_normalize_rows(W).T
    return np.clip(c, -1.0, 1.0)


def combined_margin_psi(theta, m1: float, m2: float, m3: float):
    """Target-class margin function psi(theta) of the combined margin."""
    theta = f64(theta)
    if m1 == 1.0:
        t = theta + m2
        return np.where(t <= np.pi, np.cos(t) - m3,
                        np.cos(theta) - m2 * np.sin(m2) - m3)
    u = m1 * theta + m2
    k = np.floor(u / np.pi)
    sign = np.where(np.mod(k, 2) == 0, 1.0, -1.0)
    return sign * np.cos(u) - 2.0 * k - m3


def combined_margin_logits(x, y, W, m1=1.0, m2=0.0, m3=0.0, scale=64.0):
    """Training logits: s*psi(theta_iy) on the target, s*cos elsewhere."""
    y = np.asarray(y)
    cos = cosines(x, W)
    rows = np.arange(len(y))
    theta = np.arccos(cos[rows, y])
    logits = scale * cos
    logits[rows, y] = scale * combined_margin_psi(theta, m1, m2, m3)
    return logits


def combined_margin_loss(x, y, W, m1=1.0, m2=0.0, m3=0.0, scale=64.0):
    return cross_entropy(combined_margin_logits(x, y, W, m1, m2, m3, scale), y)


def combined_margin_kink_distance(x, y, W, m1=1.0, m2=0.0, m3=0.0):
    """Smallest distance of any example to a point where the loss is not
    smooth: |cos_iy| = 1 (arccos singular) or, for m1 == 1 and m2 > 0, the
    ArcFace fallback switch theta + m2 = pi (a jump).  Measured in radians of
    theta for the switch and in (1 - |cos|) for the singularity."""
    y = np.asarray(y)
    cos = cosines(x, W)[np.arange(len(y)), y]
    d = 1.0 - np.abs(cos)
    if m1 == 1.0 and m2 > 0.0:
        d = np.minimum(d, np.abs(np.arccos(cos) + m2 - np.pi))
    return float(d.min())


# --------------------------------------------------------------------------
# center loss
# --------------------------------------------------------------------------

def center_loss(x, y, kernel, bias, centers, center_weight=0.01) -> np.ndarray:
    """Wen et al. 2016: CE(x K + b, y) + center_weight/2 ||x - c_y||^2.

    ``kernel`` is [D, C] (logits = x @ kernel + bias)."""
    x = f64(x)
    y = np.asarray(y)
    logits = x @ f64(kernel) + f64(bias)[None, :]
    diff = x - f64(centers)[y]
    return cross_entropy(logits, y) + center_weight * 0.5 * (diff ** 2).sum(1)


def center_update_alpha(x, y, centers, alpha=0.5) -> np.ndarray:
    """c_j <- c_j - alpha * sum_{i: y_i=j} (c_j - x_i) / (1 + n_j)."""
    x = f64(x)
    y = np.asarray(y)
    new = f64(centers).copy()
    for j in range(new.shape[0]):
        mask = y == j
        n_j = int(mask.sum())
        delta = (new[j][None, :] - x[mask]).sum(0) / (1.0 + n_j)
        new[j] = new[j] - alpha * delta
    return new


# --------------------------------------------------------------------------
# Gaussian affinity (Hayat et al. 2019) and CFAL (Mahbub et al. 2024)
# --------------------------------------------------------------------------

def _as_centres(W) -> np.ndarray:
    W = f64(W)
    return W[:, None, :] if W.ndim == 2 else W          # [C, m, D]


def affinity_sq_distances(x, W) -> np.ndarray:
    """||x_i - w_jk||^2, [N, C, m] (explicit differences, no expansion)."""
    Wc = _as_centres(W)
    diff = f64(x)[:, None, None, :] - Wc[None]
    return (diff ** 2).sum(-1)


def affinity_similarities(x, W, sigma) -> np.ndarray:
    """d_ij = max_k exp(-||x_i - w_jk||^2 / sigma), [N, C]."""
    return np.exp(-affinity_sq_distances(x, W) / sigma).max(-1)


def max_margin_terms(d, y, margin) -> np.ndarray:
    """L_mm_i = sum_{j != y_i} max(0, margin + d_ij - d_iy), [N]."""
    d = f64(d)
    y = np.asarray(y)
    rows = np.arange(len(y))
    h = np.maximum(0.0, margin + d - d[rows, y][:, None])
    h[rows, y] = 0.0
    return h.sum(1)


def prototype_spread(W) -> np.ndarray:
    """R_w: population variance of ||w_a - w_b||^2 over all pairs a < b of
    the M = C*m prototypes (mean of squared deviations over M(M-1)/2)."""
    P = _as_centres(W).reshape(-1, np.shape(W)[-1])
    M = P.shape[0]
    a, b = np.triu_indices(M, k=1)
    s = ((P[a] - P[b]) ** 2).sum(-1)
    return np.mean((s - s.mean()) ** 2)


def affinity_loss(x, y, W, sigma=130.0, margin=0.75, spread_weight=1.0):
    d = affinity_similarities(x, W, sigma)
    return max_margin_terms(d, y, margin) + spread_weight * prototype_spread(W)


def cfal_factor(x, y, W, sigma=130.0, gamma=2.0, class_weights=None):
    """w_{y_i} (1 - d_{i,y_i})^gamma, [N] (the stop-gradient factor)."""
    y = np.asarray(y)
    d_y = affinity_similarities(x, W, sigma)[np.arange(len(y)), y]
    C = _as_centres(W).shape[0]
    w = np.ones(C) if class_weights is None else f64(class_weights)
    return w[y] * np.power(1.0 - d_y, gamma)


def cfal_loss(x, y, W, sigma=130.0, margin=0.75, gamma=2.0,
              class_weights=None, spread_weight=1.0, factor=None):
    """CFAL per-example loss.  ``factor`` (shape [N]) overrides the
    modulating factor; pass the factor evaluated at the base point to get a
    function whose finite differences match the stop-gradient gradient."""
    if factor is None:
        factor = cfal_factor(x, y, W, sigma, gamma, class_weights)
    return factor * affinity_loss(x, y, W, sigma, margin, spread_weight)


def affinity_kink_distance(x, y, W, sigma, margin, negligible=1e-12):
    """Distances to the non-smooth points of the affinity loss, as a pair
    (hinge, tie):

    * hinge: min |margin + d_ij - d_iy| over j != y (in affinity units);
    * tie: min gap between the two smallest ||x_i - w_jk||^2 over k (in
      squared-distance units), ignored where the affinity is negligible.
    """
    y = np.asarray(y)
    rows = np.arange(len(y))
    sq = affinity_sq_distances(x, W)
    d = np.exp(-sq / sigma).max(-1)
    h = np.abs(margin + d - d[rows, y][:, None])
    h[rows, y] = np.inf
    hinge = float(h.min()) if h.shape[1] > 1 else np.inf
    tie = np.inf
    if sq.shape[-1] > 1:
        srt = np.sort(sq, axis=-1)
        gap = srt[..., 1] - srt[..., 0]
        relevant = np.exp(-srt[..., 0] / sigma) > negligible
        if relevant.any():
            tie = float(gap[relevant].min())
    return hinge, tie


# --------------------------------------------------------------------------
# composed losses: class weights, focal modulation and a regulariser on any
# softmax-type head (cfal.heads.parts)
# --------------------------------------------------------------------------

def composed_softmax_loss(logits, y, class_weights=None, gamma=0.0,
                          penalty=0.0) -> np.ndarray:
    """w_{y_i} (1 - p_{i,y_i})^gamma (-log p_{i,y_i} + penalty), [N].

    ``logits`` are a head's training logits (margin applied); ``p`` their
    softmax.  The class-balanced loss of Cui et al. 2019 is the weighted
    cross-entropy (``class_weights`` from ``class_balanced_weights``), the
    focal loss of Lin et al. 2017 the modulated one, and ``penalty`` a
    scalar regulariser added to every example before both factors (as CFAL
    adds R_w).  Every factor is part of the function: its finite
    differences include the modulating factor's derivative."""
    y = np.asarray(y)
    logp_y = log_softmax(logits)[np.arange(len(y)), y]
    w = (np.ones(np.shape(logits)[1]) if class_weights is None
         else f64(class_weights))
    modulation = np.power(-np.expm1(logp_y), gamma)   # (1 - p)^gamma
    return w[y] * modulation * (-logp_y + penalty)


def composed_margin_loss(x, y, W, m1=1.0, m2=0.0, m3=0.0, scale=64.0,
                         class_weights=None, gamma=0.0, spread_weight=0.0):
    """A combined-margin head (ArcFace / CosFace / SphereFace) with class
    weights, focal modulation and the prototype spread of its unit
    prototypes (only directions enter its logits)."""
    penalty = 0.0
    if spread_weight:
        penalty = spread_weight * prototype_spread(l2_normalize_rows(W))
    return composed_softmax_loss(
        combined_margin_logits(x, y, W, m1, m2, m3, scale), y, class_weights,
        gamma, penalty)


def composed_linear_loss(x, y, W, b=None, class_weights=None, gamma=0.0,
                         spread_weight=0.0):
    """A linear softmax with class weights, focal modulation and the
    prototype spread of its weight rows."""
    penalty = spread_weight * prototype_spread(W) if spread_weight else 0.0
    return composed_softmax_loss(linear_logits(x, W, b), y, class_weights,
                                 gamma, penalty)


# --------------------------------------------------------------------------
# per-class margins from the class counts: the dynamic margins of Ha et al.
# (Google Landmark Recognition 2020) on the combined angular margin
# --------------------------------------------------------------------------

def count_margins(class_counts, margin: float, power: float,
                  floor_ratio: float = 0.0) -> np.ndarray:
    """Dynamic margins m_c = a n_c^{-lambda} + b (Ha et al. 2020),
    with b = floor_ratio * margin and a such that the rarest class with
    examples gets exactly `margin`; empty classes get `margin`."""
    n = f64(class_counts)
    present = n > 0
    b = floor_ratio * margin
    a = (margin - b) * n[present].min() ** power
    m = np.full(n.shape, float(margin))
    m[present] = a * n[present] ** (-power) + b
    return m


def per_class_margin_logits(x, y, W, m1, m2_c, m3_c, scale):
    """Combined-margin training logits with the additive margins of each
    example's class: s psi(theta_iy; m1, m2_{y_i}, m3_{y_i}) on the target,
    s cos elsewhere."""
    y = np.asarray(y)
    cos = cosines(x, W)
    logits = scale * cos
    for i, c in enumerate(y):
        theta = np.arccos(cos[i, c])
        logits[i, c] = scale * combined_margin_psi(theta, m1, m2_c[c],
                                                   m3_c[c])
    return logits


def per_class_margin_loss(x, y, W, m1, m2_c, m3_c, scale):
    return cross_entropy(per_class_margin_logits(x, y, W, m1, m2_c, m3_c,
                                                 scale), y)


# --------------------------------------------------------------------------
# Sub-center ArcFace (Deng et al. 2020)
# --------------------------------------------------------------------------

def subcenter_all_cosines(x, W) -> np.ndarray:
    """cos_ijk = <x_i/||x_i||, w_jk/||w_jk||>, [N, C, K] for W [C, K, D]."""
    W = f64(W)
    C, K, D = W.shape
    return cosines(x, W.reshape(C * K, D)).reshape(-1, C, K)


def subcenter_cosines(x, W) -> np.ndarray:
    """The class cosines max_k cos_ijk, [N, C]."""
    return subcenter_all_cosines(x, W).max(-1)


def subcenter_arcface_logits(x, y, W, margins, scale):
    """s cos(theta_iy + m_y) on the target (insightface's fallback
    s (cos theta_iy - m_y sin m_y) where theta_iy + m_y > pi), s cos_ij
    elsewhere, theta_iy = arccos(max_k cos_iyk); ``margins`` one angle for
    every class or one per class [C]."""
    y = np.asarray(y)
    cos = subcenter_cosines(x, W)
    m = np.broadcast_to(f64(margins), (cos.shape[1],))[y]
    rows = np.arange(len(y))
    logits = scale * cos
    logits[rows, y] = scale * combined_margin_psi(np.arccos(cos[rows, y]),
                                                  1.0, m, 0.0)
    return logits


def subcenter_arcface_loss(x, y, W, margins, scale):
    return cross_entropy(subcenter_arcface_logits(x, y, W, margins, scale), y)


def subcenter_kink_distance(x, y, W, margins) -> float:
    """Smallest distance to a non-smooth point of the sub-center ArcFace
    loss: |cos_iy| = 1, the fallback switch theta_iy + m_y = pi (radians),
    and a tie between the two largest sub-center cosines of any class
    (cosine units)."""
    y = np.asarray(y)
    every = subcenter_all_cosines(x, W)
    cos = every.max(-1)[np.arange(len(y)), y]
    m = np.broadcast_to(f64(margins), (every.shape[1],))[y]
    d = np.minimum(1.0 - np.abs(cos), np.abs(np.arccos(cos) + m - np.pi))
    if every.shape[-1] > 1:
        top = np.sort(every, axis=-1)
        d = np.minimum(d.min(), (top[..., -1] - top[..., -2]).min())
    return float(np.min(d))


# --------------------------------------------------------------------------
# LDAM (Cao et al. 2019)
# --------------------------------------------------------------------------

def ldam_margins(class_counts, max_margin: float) -> np.ndarray:
    """Cao et al. 2019: Delta_j = K / n_j^{1/4}, K such that the largest
    margin (the rarest class with examples) is max_margin.  A class with no
    examples gets max_margin (cfal's convention; it is never a target)."""
    n = f64(class_counts)
    present = n > 0
    K = max_margin * n[present].min() ** 0.25
    delta = np.full(n.shape, float(max_margin))
    delta[present] = K / n[present] ** 0.25
    return delta


def ldam_logits(x, y, W, class_counts, max_margin=0.5, scale=30.0):
    """s cos_ij, the target s (cos_iy - Delta_y): normalised features and
    weights as in the authors' code, margin before the scale."""
    y = np.asarray(y)
    z = cosines(x, W)
    rows = np.arange(len(y))
    z[rows, y] -= ldam_margins(class_counts, max_margin)[y]
    return scale * z


def ldam_loss(x, y, W, class_counts, max_margin=0.5, scale=30.0):
    return cross_entropy(ldam_logits(x, y, W, class_counts, max_margin,
                                     scale), y)


# --------------------------------------------------------------------------
# logit adjustment (Menon et al. 2021) and Balanced Softmax (Ren et al. 2020)
# --------------------------------------------------------------------------

def class_priors(class_counts) -> np.ndarray:
    """pi_j = n_j / sum n, a class with no examples counted as one (cfal's
    documented convention: its log prior stays finite)."""
    n = np.maximum(f64(class_counts), 1.0)
    return n / n.sum()


def logit_adjusted_logits(x, W, b, class_counts, tau: float) -> np.ndarray:
    """Menon et al. 2021, the logit-adjusted loss's logits:
    f_j(x) + tau * log pi_j."""
    return linear_logits(x, W, b) + tau * np.log(class_priors(class_counts))


def logit_adjusted_loss(x, y, W, b, class_counts, tau=1.0) -> np.ndarray:
    """-log [e^{f_y + tau log pi_y} / sum_j e^{f_j + tau log pi_j}], [N]."""
    return cross_entropy(logit_adjusted_logits(x, W, b, class_counts, tau), y)


def balanced_softmax_loss(x, y, W, b, class_counts) -> np.ndarray:
    """Ren et al. 2020: -log phi_y, phi_j = n_j e^{eta_j} / sum_k n_k e^{eta_k}
    with eta the linear logits, written as in the paper (counts, not
    priors; an empty class counted as one example)."""
    y = np.asarray(y)
    n = np.maximum(f64(class_counts), 1.0)
    eta = linear_logits(x, W, b)
    shift = eta.max(axis=1, keepdims=True)
    weighted = n[None, :] * np.exp(eta - shift)            # n_j e^{eta_j}
    rows = np.arange(len(y))
    return -np.log(weighted[rows, y] / weighted.sum(axis=1))

"""cfal.heads checked against independent float64 NumPy references.

For every head: per-example loss values, gradients of sum(loss) with respect
to the embeddings and to the variables (TensorFlow autodiff vs central finite
differences of ``tests/support/reference.py``), ``__call__`` scores and ``predict``.
Plus hard cases (zero / duplicated embeddings, embeddings on their
prototype, cos = +-1, wide angles, extreme sigma, strong class imbalance),
the CenterLoss ``update`` rule and half-precision inputs.

Test data are rounded to float32 before both sides see them, so the only
differences are float32 arithmetic in the library.  Gradient checks compare
max|g_tf - g_fd| against 1e-3 * max|g_fd| (+ a tiny absolute floor).
"""

from __future__ import annotations


import numpy as np
import pytest
import tensorflow as tf

from support import reference as ref
from support.head_cases import set_linear

C, D, N = 5, 6, 8
GRAD_RTOL = 1e-3
LOSS_RTOL = 1e-4


@pytest.fixture(scope="module")
def H():
    """The cfal.heads module."""
    import cfal.heads
    return cfal.heads


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------

def r32(a) -> np.ndarray:
    """Rounds to float32 and back, so NumPy and TF see identical inputs."""
    return np.asarray(a, dtype=np.float32).astype(np.float64)


def to_np(t) -> np.ndarray:
    if isinstance(t, tf.IndexedSlices):
        t = tf.convert_to_tensor(t)
    return np.asarray(tf.cast(t, tf.float64).numpy())


def make_labels(rng, n=N, c=C) -> np.ndarray:
    """Labels covering every class, shuffled."""
    return rng.permutation(np.arange(n) % c).astype(np.int32)


def loss_and_grads(head, x, y, variables, dtype=tf.float32):
    """head.loss(x, y) and d sum(loss) / d [x] + variables."""
    xt = tf.constant(np.asarray(x, np.float32), dtype=tf.float32)
    if dtype != tf.float32:
        xt = tf.cast(xt, dtype)
    yt = tf.constant(y, tf.int32)
    with tf.GradientTape(watch_accessed_variables=False) as tape:
        tape.watch(xt)
        for v in variables:
            tape.watch(v)
        loss = head.loss(xt, yt)
        total = tf.reduce_sum(loss)
    grads = tape.gradient(total, [xt] + list(variables))
    return loss, grads


def assert_finite(*arrays, what=""):
    for a in arrays:
        assert a is not None, f"{what}: missing gradient"
        a = to_np(a)
        assert np.all(np.isfinite(a)), f"{what}: non-finite values {a}"


def check_loss(loss, want, rtol=LOSS_RTOL, atol=1e-5, rows=None):
    """|got - want| <= atol + rtol |want| elementwise (atol may be [N])."""
    assert loss.dtype == tf.float32, loss.dtype
    assert tuple(loss.shape) == (len(want),)
    got = to_np(loss)
    assert np.all(np.isfinite(got)), got
    atol = np.broadcast_to(np.asarray(atol, np.float64), got.shape)
    if rows is not None:
        got, want, atol = got[rows], want[rows], atol[rows]
    bad = np.abs(got - want) > atol + rtol * np.abs(want)
    assert not bad.any(), (
        f"loss mismatch at rows {np.flatnonzero(bad)}:\n got={got}\n"
        f"want={want}\n|diff|={np.abs(got - want)}\nallowed="
        f"{atol + rtol * np.abs(want)}")


def check_grad(got, want, name, rtol=GRAD_RTOL, atol=1e-6, rows=None):
    """max|got - want| <= rtol * max|want| + atol (optionally on rows)."""
    assert got is not None, f"no gradient for {name}"
    got = to_np(got)
    assert got.shape == want.shape, (name, got.shape, want.shape)
    assert np.all(np.isfinite(got)), f"{name}: non-finite gradient {got}"
    if rows is not None:
        got, want = got[rows], want[rows]
    err = float(np.max(np.abs(got - want)))
    scale = float(np.max(np.abs(want)))
    assert err <= rtol * scale + atol, (
        f"{name}: max|tf - fd| = {err:.3e}, max|fd| = {scale:.3e}\n"
        f"tf=\n{got}\nfd=\n{want}")


def check_predict(pred, scores, min_gap=1e-4):
    """predict == argmax of reference scores, on rows without near-ties."""
    assert pred.dtype == tf.int32, pred.dtype
    pred = pred.numpy()
    assert pred.shape == (scores.shape[0],)
    srt = np.sort(scores, axis=1)
    gap = srt[:, -1] - srt[:, -2]
    rows = gap > min_gap * max(1.0, float(np.abs(scores).max()))
    np.testing.assert_array_equal(pred[rows], np.argmax(scores, 1)[rows])


def assert_update_noop(head, x, y):
    before = head.prototypes.numpy().copy()
    head.update(tf.constant(x, tf.float32), tf.constant(y, tf.int32))
    np.testing.assert_array_equal(head.prototypes.numpy(), before)


# ==========================================================================
# self-checks of the reference (run even before cfal.heads exists)
# ==========================================================================

class TestReference:

    def test_cross_entropy_matches_sklearn(self):
        from sklearn.metrics import log_loss
        rng = np.random.default_rng(0)
        z = rng.normal(size=(N, C)) * 3
        y = make_labels(rng)
        np.testing.assert_allclose(
            ref.cross_entropy(z, y).mean(),
            log_loss(y, ref.softmax(z), labels=np.arange(C)), rtol=1e-12)

    def test_numerical_grad_matches_analytic_softmax(self):
        rng = np.random.default_rng(1)
        x, W, b = rng.normal(size=(N, D)), rng.normal(size=(C, D)), \
            rng.normal(size=C)
        y = make_labels(rng)
        g = ref.softmax(ref.linear_logits(x, W, b))
        g[np.arange(N), y] -= 1.0                          # dL/dz
        num_x = ref.numerical_grad(
            lambda a: ref.softmax_loss(a, y, W, b).sum(), x, 1e-6)
        num_w = ref.numerical_grad(
            lambda a: ref.softmax_loss(x, y, a, b).sum(), W, 1e-6)
        np.testing.assert_allclose(num_x, g @ W, atol=1e-8)
        np.testing.assert_allclose(num_w, g.T @ x, atol=1e-8)

    @pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
    def test_focal_analytic_gradient(self, gamma):
        rng = np.random.default_rng(2)
        x, W, b = rng.normal(size=(N, D)), rng.normal(size=(C, D)), \
            rng.normal(size=C)
        y = make_labels(rng)
        a = rng.uniform(0.2, 2.0, size=C)
        P = ref.softmax(ref.linear_logits(x, W, b))
        p = P[np.arange(N), y]
        # dFL/dp for FL = -a (1-p)^g log p;  dp/dz_k = p (delta_yk - P_k)
        dfdp = a[y] * (gamma * (1 - p) ** (gamma - 1) * np.log(p)
                       - (1 - p) ** gamma / p) if gamma else -a[y] / p
        onehot = np.eye(C)[y]
        dz = (dfdp * p)[:, None] * (onehot - P)
        num = ref.numerical_grad(
            lambda v: ref.focal_loss(v, y, W, b, gamma, a).sum(), x, 1e-6)
        np.testing.assert_allclose(num, dz @ W, atol=1e-8)
        if gamma == 0.0:
            np.testing.assert_allclose(
                ref.focal_loss(x, y, W, b, 0.0),
                ref.softmax_loss(x, y, W, b), rtol=1e-12)

    def test_class_balanced_weights(self):
        counts = np.array([5000, 1000, 100, 10, 1])
        for beta in (0.9, 0.999, 0.9999):
            w = ref.class_balanced_weights(counts, beta)
            assert abs(w.sum() - len(counts)) < 1e-12
            assert np.all(np.diff(w) >= 0)             # rarer -> heavier
        assert np.all(np.diff(ref.class_balanced_weights(counts, .9999)) > 0)
        np.testing.assert_allclose(ref.class_balanced_weights(counts, 0.0), 1)
        np.testing.assert_allclose(
            ref.class_balanced_weights([7, 7, 7], 0.99), 1)
        # beta -> 1 tends to inverse frequency
        inv = 1.0 / counts
        np.testing.assert_allclose(
            ref.class_balanced_weights(counts, 1 - 1e-9),
            inv * len(counts) / inv.sum(), rtol=1e-4)
        # hand value: beta=0.5, counts (1, 2): raw (1, 2/3) -> (1.2, 0.8)
        np.testing.assert_allclose(
            ref.class_balanced_weights([1, 2], 0.5), [1.2, 0.8])

    def test_combined_margin_psi(self):
        th = np.linspace(0, np.pi, 1001)
        # no margin -> plain normalised softmax
        np.testing.assert_allclose(ref.combined_margin_psi(th, 1, 0, 0),
                                   np.cos(th), atol=1e-15)
        # SphereFace extension: cos(u) for u <= pi, continuous, decreasing
        m1 = 1.35
        psi = ref.combined_margin_psi(th, m1, 0.0, 0.1)
        u = m1 * th
        np.testing.assert_allclose(psi[u <= np.pi], np.cos(u[u <= np.pi]) - .1)
        assert np.all(np.diff(psi) < 0)
        for k in (1, 2):
            t = k * np.pi / m1
            lo, hi = ref.combined_margin_psi(np.array([t - 1e-9, t + 1e-9]),
                                             m1, 0.0, 0.0)
            assert abs(lo - hi) < 1e-6
        # at u = pi: -1 ; at u just above pi: -cos(u) - 2 ~ -1
        assert ref.combined_margin_psi(np.array(3.0), 1.35, 0, 0) == \
            pytest.approx(-np.cos(4.05) - 2)
        # ArcFace: cos(theta + m) inside, insightface fallback beyond pi
        m = 0.5
        inside = ref.combined_margin_psi(np.array(1.0), 1.0, m, 0.2)
        assert inside == pytest.approx(np.cos(1.5) - 0.2)
        outside = ref.combined_margin_psi(np.array(3.0), 1.0, m, 0.2)
        assert outside == pytest.approx(np.cos(3.0) - m * np.sin(m) - 0.2)

    def test_combined_margin_zero_vectors(self):
        rng = np.random.default_rng(3)
        x, W = rng.normal(size=(N, D)), rng.normal(size=(C, D))
        x[0] = 0
        W[1] = 0
        cos = ref.cosines(x, W)
        assert np.all(cos[0] == 0) and np.all(cos[:, 1] == 0)
        y = make_labels(rng)
        assert np.all(np.isfinite(ref.combined_margin_loss(x, y, W, 1, .5)))

    def test_affinity_and_spread(self):
        rng = np.random.default_rng(4)
        x, W = rng.normal(size=(N, D)), rng.normal(size=(C, 3, D))
        sigma = 2.0
        d = ref.affinity_similarities(x, W, sigma)
        for i in range(N):
            for j in range(C):
                want = max(np.exp(-np.sum((x[i] - W[j, k]) ** 2) / sigma)
                           for k in range(3))
                assert d[i, j] == pytest.approx(want, rel=1e-12)
        from scipy.spatial.distance import pdist
        s = pdist(W.reshape(-1, D), "sqeuclidean")
        assert len(s) == 15 * 14 // 2
        assert ref.prototype_spread(W) == pytest.approx(np.var(s), rel=1e-12)
        y = make_labels(rng)
        mm = np.array([sum(max(0.0, .75 + d[i, j] - d[i, y[i]])
                           for j in range(C) if j != y[i]) for i in range(N)])
        np.testing.assert_allclose(ref.affinity_loss(x, y, W, sigma, .75, .3),
                                   mm + .3 * np.var(s), rtol=1e-12)
        # one centre per class: [C, D] and [C, 1, D] agree
        np.testing.assert_allclose(
            ref.affinity_loss(x, y, W[:, 0], sigma),
            ref.affinity_loss(x, y, W[:, :1], sigma), rtol=1e-14)

    def test_cfal_reduces_to_affinity_and_stop_gradient(self):
        rng = np.random.default_rng(5)
        x, W = rng.normal(size=(N, D)), rng.normal(size=(C, D))
        y = make_labels(rng)
        np.testing.assert_allclose(
            ref.cfal_loss(x, y, W, 3.0, gamma=0.0),
            ref.affinity_loss(x, y, W, 3.0), rtol=1e-14)
        w = ref.class_balanced_weights([100, 50, 10, 5, 1], 0.99)
        d_y = ref.affinity_similarities(x, W, 3.0)[np.arange(N), y]
        np.testing.assert_allclose(
            ref.cfal_factor(x, y, W, 3.0, 2.0, w), w[y] * (1 - d_y) ** 2)
        # held-fixed factor: the FD gradient is factor * affinity gradient
        fac = ref.cfal_factor(x, y, W, 3.0, 2.0, w)
        g = ref.numerical_grad(lambda v: ref.cfal_loss(
            v, y, W, 3.0, gamma=2.0, class_weights=w, factor=fac).sum(),
            x, 1e-6)
        g_aff = ref.numerical_grad(lambda v: (fac * ref.affinity_loss(
            v, y, W, 3.0)).sum(), x, 1e-6)
        np.testing.assert_allclose(g, g_aff, atol=1e-9)

    def test_center_update_alpha(self):
        rng = np.random.default_rng(6)
        x, c = rng.normal(size=(N, D)), rng.normal(size=(C, D))
        y = np.array([0, 0, 0, 1, 1, 2, 3, 0])              # class 4 absent
        new = ref.center_update_alpha(x, y, c, 0.5)
        # independent vectorised form
        n = np.bincount(y, minlength=C).astype(float)
        s = np.zeros_like(c)
        np.add.at(s, y, c[y] - x)
        np.testing.assert_allclose(new, c - 0.5 * s / (1 + n)[:, None])
        np.testing.assert_array_equal(new[4], c[4])
        # hand value: one example of class 0 -> move half-way... times alpha
        np.testing.assert_allclose(
            ref.center_update_alpha(np.ones((1, 2)), [0], np.zeros((1, 2)),
                                    1.0), [[0.5, 0.5]])


# ==========================================================================
# Softmax and Focal (linear logits)
# ==========================================================================

LINEAR_CASES = ["random", "zero_rows", "all_zero", "duplicates"]


def linear_case(seed, case, logit_scale=0.7):
    rng = np.random.default_rng(seed)
    W = r32(rng.normal(size=(C, D)) * logit_scale)
    b = r32(rng.normal(size=C) * 0.3)
    x = rng.normal(size=(N, D))
    y = make_labels(rng)
    if case == "zero_rows":
        x[[0, 3]] = 0.0
    elif case == "all_zero":
        x[:] = 0.0
    elif case == "duplicates":
        x[1] = x[0]
        y[1] = y[0]                             # same example twice
        x[2] = x[0]
        y[2] = (y[0] + 1) % C                   # same point, other label
    return r32(x), y, W, b




@pytest.mark.parametrize("case", LINEAR_CASES)
@pytest.mark.parametrize("use_bias", [True, False])
def test_softmax(H, case, use_bias):
    x, y, W, b = linear_case(10, case)
    head = H.Softmax(num_classes=C, embedding_dim=D, use_bias=use_bias,
                     seed=0)
    variables = set_linear(head, W, b, use_bias)
    bb = b if use_bias else None
    loss, grads = loss_and_grads(head, x, y, variables)
    check_loss(loss, ref.softmax_loss(x, y, W, bb))

    check_grad(grads[0], ref.numerical_grad(
        lambda v: ref.softmax_loss(v, y, W, bb).sum(), x, 1e-5), "dx")
    check_grad(grads[1], ref.numerical_grad(
        lambda v: ref.softmax_loss(x, y, v, bb).sum(), W, 1e-5), "dW")
    if use_bias:
        check_grad(grads[2], ref.numerical_grad(
            lambda v: ref.softmax_loss(x, y, W, v).sum(), b, 1e-5), "db")

    logits = ref.linear_logits(x, W, bb)
    out = head(tf.constant(x, tf.float32))
    assert out.dtype == tf.float32
    np.testing.assert_allclose(to_np(out), logits, rtol=1e-5, atol=1e-5)
    check_predict(head.predict(tf.constant(x, tf.float32)), logits)
    assert_update_noop(head, x, y)


FOCAL_WEIGHTING = ["none", "alpha", "counts"]
IMBALANCED = [4000, 700, 60, 8, 1]


@pytest.mark.parametrize("case", LINEAR_CASES)
@pytest.mark.parametrize("weighting", FOCAL_WEIGHTING)
@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
def test_focal(H, case, weighting, gamma):
    use_bias = case != "duplicates"          # exercise use_bias=False too
    x, y, W, b = linear_case(11, case)
    kw, a = {}, None
    if weighting == "alpha":
        a = [0.25, 0.5, 1.0, 2.0, 0.75]
        kw["alpha"] = a
    elif weighting == "counts":
        kw["class_counts"] = IMBALANCED
        a = ref.class_balanced_weights(IMBALANCED, 0.9999)   # default beta
    head = H.Focal(num_classes=C, embedding_dim=D, gamma=gamma,
                   use_bias=use_bias, seed=0, **kw)
    variables = set_linear(head, W, b, use_bias)
    bb = b if use_bias else None

    def f(xx=x, WW=W, b_=bb):
        return ref.focal_loss(xx, y, WW, b_, gamma, a).sum()

    loss, grads = loss_and_grads(head, x, y, variables)
    check_loss(loss, ref.focal_loss(x, y, W, bb, gamma, a))
    check_grad(grads[0], ref.numerical_grad(lambda v: f(xx=v), x, 1e-5), "dx")
    check_grad(grads[1], ref.numerical_grad(lambda v: f(WW=v), W, 1e-5), "dW")
    if use_bias:
        check_grad(grads[2], ref.numerical_grad(lambda v: f(b_=v), b, 1e-5),
                   "db")
    logits = ref.linear_logits(x, W, bb)
    np.testing.assert_allclose(to_np(head(tf.constant(x, tf.float32))),
                               logits, rtol=1e-5, atol=1e-5)
    check_predict(head.predict(tf.constant(x, tf.float32)), logits)
    assert_update_noop(head, x, y)


def test_focal_confident_examples_finite(H):
    """p_y -> 1 (and p_y -> 0): (1-p)^gamma with gamma < 1 has an infinite
    derivative at p = 1, so only finiteness is asserted for the
    saturated rows; the loss values must still match."""
    x, y, W, b = linear_case(12, "random")
    W = W * 40.0                                  # saturate the softmax
    for gamma in (0.0, 0.5, 2.0):
        head = H.Focal(num_classes=C, embedding_dim=D, gamma=gamma,
                       class_counts=IMBALANCED, seed=0)
        variables = set_linear(head, W, b, True)
        loss, grads = loss_and_grads(head, x, y, variables)
        a = ref.class_balanced_weights(IMBALANCED, 0.9999)
        check_loss(loss, ref.focal_loss(x, y, W, b, gamma, a),
                   rtol=1e-3, atol=1e-4)
        assert_finite(*grads, what=f"focal gamma={gamma}")


# ==========================================================================
# class-balanced weights
# ==========================================================================

@pytest.mark.parametrize("counts,beta", [
    ([4000, 700, 60, 8, 1], 0.9999),
    ([4000, 700, 60, 8, 1], 0.999),
    ([4000, 700, 60, 8, 1], 0.9),
    ([4000, 700, 60, 8, 1], 0.0),
    ([10, 10, 10], 0.99),
    ([1, 2], 0.5),
    ([60000, 3], 0.99999),
])
def test_class_balanced_weights(H, counts, beta):
    got = H.class_balanced_weights(counts, beta)
    assert isinstance(got, np.ndarray) and got.dtype == np.float64
    assert got.shape == (len(counts),)
    np.testing.assert_allclose(got, ref.class_balanced_weights(counts, beta),
                               rtol=1e-10)
    if beta == 0.0:
        np.testing.assert_array_equal(got, np.ones(len(counts)))


# ==========================================================================
# Combined angular margin: ArcFace / CosFace / SphereFace / general
# ==========================================================================

# (id, class name, constructor kwargs, (m1, m2, m3))
MARGIN_SPECS = [
    ("arcface", "ArcFace", dict(margin=0.5), (1.0, 0.5, 0.0)),
    ("cosface", "CosFace", dict(margin=0.35), (1.0, 0.0, 0.35)),
    ("sphereface", "SphereFace", dict(margin=1.35), (1.35, 0.0, 0.0)),
    ("combined_arc_cos", "CombinedMargin", dict(m1=1.0, m2=0.3, m3=0.2),
     (1.0, 0.3, 0.2)),
    ("combined_all", "CombinedMargin", dict(m1=1.2, m2=0.1, m3=0.05),
     (1.2, 0.1, 0.05)),
    ("normface", "CombinedMargin", dict(), (1.0, 0.0, 0.0)),
]
MARGIN_IDS = [s[0] for s in MARGIN_SPECS]

# target angles for the "wide" case: beyond pi - m for ArcFace (fallback),
# beyond pi / m1 for SphereFace (k = 1), plus ordinary ones; each is at
# least 0.05 rad away from the ArcFace switch at pi - m (m = 0.5 or 0.3).
WIDE_ANGLES = [np.pi - 0.25, np.pi - 0.15, 2.5, 2.3, 1.0, 0.4, np.pi - 0.7,
               2.95]


def _rotate_towards(u, t, rng, r):
    """A vector of norm r at angle t from the direction u."""
    u = u / np.linalg.norm(u)
    v = rng.normal(size=u.shape)
    v -= (v @ u) * u
    v /= np.linalg.norm(v)
    return r * (np.cos(t) * u + np.sin(t) * v)


def margin_case(seed, case, m):
    """Random data at least 1e-3 away from the non-smooth points."""
    for attempt in range(200):
        rng = np.random.default_rng(seed * 1000 + attempt)
        W = rng.normal(size=(C, D))
        x = rng.normal(size=(N, D))
        y = make_labels(rng)
        if case == "wide":
            for i, t in enumerate(WIDE_ANGLES):
                x[i] = _rotate_towards(W[y[i]], t, rng, rng.uniform(0.5, 2))
        elif case == "duplicates":
            x[1] = x[0]
            y[1] = y[0]
            x[2] = x[0]
            y[2] = (y[0] + 1) % C
        x, W = r32(x), r32(W)
        if ref.combined_margin_kink_distance(x, y, W, *m) > 1e-3:
            return x, y, W
    raise AssertionError("no smooth test point found")


def make_margin_head(H, cls, kw, scale):
    return getattr(H, cls)(num_classes=C, embedding_dim=D, scale=scale,
                           seed=0, **kw)


@pytest.mark.parametrize("scale", [16.0, 64.0])
@pytest.mark.parametrize("case", ["random", "wide", "duplicates"])
@pytest.mark.parametrize("spec", MARGIN_SPECS, ids=MARGIN_IDS)
def test_combined_margin(H, spec, case, scale):
    _, cls, kw, m = spec
    x, y, W = margin_case(20, case, m)
    head = make_margin_head(H, cls, kw, scale)
    head.prototypes.assign(W.astype(np.float32))
    loss, grads = loss_and_grads(head, x, y, [head.prototypes])

    def f(xx=x, WW=W):
        return ref.combined_margin_loss(xx, y, WW, *m, scale=scale).sum()

    check_loss(loss, ref.combined_margin_loss(x, y, W, *m, scale=scale),
               atol=1e-5 * scale)
    check_grad(grads[0], ref.numerical_grad(lambda v: f(xx=v), x, 1e-6), "dx")
    check_grad(grads[1], ref.numerical_grad(lambda v: f(WW=v), W, 1e-6), "dW")

    xt, yt = tf.constant(x, tf.float32), tf.constant(y, tf.int32)
    cos_logits = scale * ref.cosines(x, W)
    for out in (head(xt), head(xt, yt, training=False),
                head(xt, training=True)):
        assert out.dtype == tf.float32
        np.testing.assert_allclose(to_np(out), cos_logits, atol=1e-5 * scale)
    np.testing.assert_allclose(
        to_np(head(xt, yt, training=True)),
        ref.combined_margin_logits(x, y, W, *m, scale=scale),
        atol=1e-5 * scale)
    check_predict(head.predict(xt), ref.cosines(x, W))
    assert_update_noop(head, x, y)


@pytest.mark.parametrize("spec", MARGIN_SPECS, ids=MARGIN_IDS)
def test_combined_margin_degenerate(H, spec):
    """Zero embedding, embedding equal to (a positive multiple of) its
    prototype (cos = +1) and opposite to it (cos = -1).

    At |cos| = 1 arccos has an infinite derivative and at a zero embedding
    the normalisation has no direction, so the FD gradient is ill-defined
    there: for those rows (and for the prototype gradient, which they feed)
    only finiteness is asserted.  Near |cos| = 1 the float32 angle is
    ~sqrt(2*6e-8) ~ 3.5e-4 rad uncertain, hence the loose value tolerance on
    those rows."""
    _, cls, kw, m = spec
    scale = 64.0
    rng = np.random.default_rng(21)
    W = r32(rng.normal(size=(C, D)))
    x = rng.normal(size=(N, D))
    y = make_labels(rng)
    x[0] = 0.0                       # zero embedding
    x[1] = W[y[1]]                   # exactly the class prototype: cos = +1
    x[2] = -0.7 * W[y[2]]            # exactly opposite: cos = -1
    x[3] = 2.5 * W[y[3]]             # positive multiple: cos = +1
    x = r32(x)
    head = make_margin_head(H, cls, kw, scale)
    head.prototypes.assign(W.astype(np.float32))
    loss, grads = loss_and_grads(head, x, y, [head.prototypes])
    assert_finite(loss, *grads, what=cls)

    want = ref.combined_margin_loss(x, y, W, *m, scale=scale)
    smooth = np.arange(4, N)
    check_loss(loss, want, atol=1e-5 * scale, rows=np.r_[0, smooth])
    check_loss(loss, want, rtol=1e-2, atol=0.05 * scale / 16,
               rows=np.arange(1, 4))
    # x-gradients of the smooth rows are well-defined (each row's loss only
    # depends on its own embedding)
    fd = ref.numerical_grad(lambda v: ref.combined_margin_loss(
        v, y, W, *m, scale=scale).sum(), x, 1e-6)
    check_grad(grads[0], fd, "dx (smooth rows)", rows=smooth)
    xt = tf.constant(x, tf.float32)
    np.testing.assert_allclose(to_np(head(xt)), scale * ref.cosines(x, W),
                               atol=1e-5 * scale)
    assert np.all(to_np(head(xt))[0] == 0.0)


@pytest.mark.parametrize("spec", MARGIN_SPECS, ids=MARGIN_IDS)
def test_combined_margin_zero_prototype(H, spec):
    """A zero prototype normalises to zero: cos = 0 against it.  Its own
    gradient is direction-less (finite only); everything else is compared."""
    _, cls, kw, m = spec
    x, y, W = margin_case(22, "random", m)
    W[2] = 0.0
    # The seeded point must sit clear of a kink for finite differences.
    assert ref.combined_margin_kink_distance(x, y, W, *m) >= 1e-3
    head = make_margin_head(H, cls, kw, 16.0)
    head.prototypes.assign(W.astype(np.float32))
    loss, grads = loss_and_grads(head, x, y, [head.prototypes])
    assert_finite(loss, *grads, what=cls)
    check_loss(loss, ref.combined_margin_loss(x, y, W, *m, scale=16.0),
               atol=1.6e-4)
    f = lambda xx=x, WW=W: ref.combined_margin_loss(  # noqa: E731
        xx, y, WW, *m, scale=16.0).sum()
    check_grad(grads[0], ref.numerical_grad(lambda v: f(xx=v), x, 1e-6), "dx")
    check_grad(grads[1], ref.numerical_grad(lambda v: f(WW=v), W, 1e-6),
               "dW (nonzero rows)", rows=np.array([0, 1, 3, 4]))


# ==========================================================================
# CenterLoss
# ==========================================================================

CENTER_CASES = ["random", "zero_rows", "duplicates", "on_center"]


def center_case(seed, case):
    rng = np.random.default_rng(seed)
    K = r32(rng.normal(size=(D, C)) * 0.7)
    b = r32(rng.normal(size=C) * 0.3)
    c = r32(rng.normal(size=(C, D)))
    x = rng.normal(size=(N, D))
    y = make_labels(rng)
    if case == "zero_rows":
        x[[0, 3]] = 0.0
    elif case == "duplicates":
        x[1] = x[0]
        y[1] = y[0]
        x[2] = x[0]
        y[2] = (y[0] + 1) % C
    elif case == "on_center":
        x[0] = c[y[0]]
        x[4] = c[y[4]]
    return r32(x), y, K, b, c


def make_center_head(H, mode, cw=0.01, alpha=0.5):
    return H.CenterLoss(num_classes=C, embedding_dim=D, alpha=alpha,
                        center_weight=cw, center_update=mode, seed=0)


def _setup_center(head, K, b, c):
    head.classifier_kernel.assign(K.astype(np.float32))
    head.classifier_bias.assign(b.astype(np.float32))
    head.prototypes.assign(c.astype(np.float32))


@pytest.mark.parametrize("cw", [0.01, 0.5])
@pytest.mark.parametrize("case", CENTER_CASES)
@pytest.mark.parametrize("mode", ["alpha", "gradient"])
def test_center_loss(H, mode, case, cw):
    x, y, K, b, c = center_case(30, case)
    head = make_center_head(H, mode, cw)
    _setup_center(head, K, b, c)
    variables = [head.classifier_kernel, head.classifier_bias]
    if mode == "gradient":
        # centres learned by gradient descent: they must be trainable
        assert head.prototypes.trainable
        variables.append(head.prototypes)
    loss, grads = loss_and_grads(head, x, y, variables)

    def f(xx=x, KK=K, bb=b, cc=c):
        return ref.center_loss(xx, y, KK, bb, cc, cw).sum()

    check_loss(loss, ref.center_loss(x, y, K, b, c, cw))
    check_grad(grads[0], ref.numerical_grad(lambda v: f(xx=v), x, 1e-5), "dx")
    check_grad(grads[1], ref.numerical_grad(lambda v: f(KK=v), K, 1e-5), "dK")
    check_grad(grads[2], ref.numerical_grad(lambda v: f(bb=v), b, 1e-5), "db")
    if mode == "gradient":
        # centres are trained by gradient descent in this mode; in "alpha"
        # mode they move by the update rule, so their gradient is not
        # specified and not checked.
        check_grad(grads[3], ref.numerical_grad(lambda v: f(cc=v), c, 1e-5),
                   "dcenters")
    logits = x @ K + b
    xt = tf.constant(x, tf.float32)
    np.testing.assert_allclose(to_np(head(xt)), logits, rtol=1e-5, atol=1e-5)
    check_predict(head.predict(xt), logits)


@pytest.mark.parametrize("alpha", [0.5, 0.1, 1.0])
def test_center_update_alpha(H, alpha):
    rng = np.random.default_rng(31)
    x = r32(rng.normal(size=(N, D)))
    y = np.array([0, 0, 0, 1, 1, 2, 3, 0], np.int32)      # class 4 absent
    _, _, K, b, c = center_case(31, "random")
    head = make_center_head(H, "alpha", alpha=alpha)
    _setup_center(head, K, b, c)
    head.update(tf.constant(x, tf.float32), tf.constant(y, tf.int32))
    want = ref.center_update_alpha(x, y, c, alpha)
    got = head.prototypes.numpy().astype(np.float64)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(got[4], c[4])            # absent class
    # a second call keeps applying the rule from the new centres
    head.update(tf.constant(x, tf.float32), tf.constant(y, tf.int32))
    np.testing.assert_allclose(head.prototypes.numpy(),
                               ref.center_update_alpha(x, y, want, alpha),
                               rtol=1e-5, atol=1e-6)
    # classifier untouched by update
    np.testing.assert_array_equal(head.classifier_kernel.numpy(),
                                  K.astype(np.float32))


def test_center_update_gradient_mode_is_noop(H):
    x, y, K, b, c = center_case(32, "random")
    head = make_center_head(H, "gradient")
    _setup_center(head, K, b, c)
    head.update(tf.constant(x, tf.float32), tf.constant(y, tf.int32))
    np.testing.assert_array_equal(head.prototypes.numpy(),
                                  c.astype(np.float32))


# ==========================================================================
# Affinity and CFAL
# ==========================================================================

SIGMAS = [1e-2, 1.0, 130.0, 1e4]
AFF_CASES = ["scaled", "unit", "hard"]


def affinity_case(seed, case, sigma, m, margin=0.75):
    """Data away from hinge kinks and centre ties.

    "scaled": prototypes and embeddings at the length scale sqrt(sigma), so
    that affinities lie in (0, 1) and hinges are both active and inactive.
    "unit": unit-scale data whatever sigma (affinities underflow to 0 for
    sigma = 1e-2, are ~1 for sigma = 1e4).
    "hard": unit scale (scaled for sigma = 1e-2 so that it is not trivial)
    plus a zero embedding, an embedding exactly on a prototype of its class
    and duplicated embeddings (same and different labels)."""
    length = np.sqrt(sigma) if case == "scaled" else 1.0
    if case == "hard" and sigma < 1:
        length = np.sqrt(sigma)
    for attempt in range(500):
        rng = np.random.default_rng(seed * 1000 + attempt)
        W = rng.normal(size=(C, m, D)) * 0.6 * length
        y = make_labels(rng)
        k = rng.integers(0, m, N)
        noise = rng.uniform(0.1, 0.6, size=(N, 1))
        x = W[y, k] + rng.normal(size=(N, D)) * noise * length
        if case == "hard":
            x[0] = 0.0
            x[1] = W[y[1], k[1]]
            x[3] = x[2]
            y[3] = y[2]
            x[4] = x[2]
            y[4] = (y[2] + 2) % C
        x, W = r32(x), r32(W)
        if m == 1:
            W = W[:, 0]
        hinge, tie = ref.affinity_kink_distance(x, y, W, sigma, margin)
        if hinge > 5e-3 and tie > 1e-3 * length ** 2:
            return x, y, W, length
    raise AssertionError("no smooth test point found")


def cfal_factor_allowance(x, y, W, sigma, margin, gamma, w, sw):
    """Float32 allowance on CFAL loss values.

    d_y is a float32 number in (0, 1]; near 1 its spacing is 2^-24, so even
    a correctly rounded d_y leaves 1 - d_y uncertain by a few 2^-24 and
    (1 - d_y)^gamma with gamma < 1 amplifies that when 1 - d_y is tiny (large
    sigma, or an embedding on its prototype).  Allow 4 * 2^-24 on 1 - d_y:
    w_y (L_mm + R) [(1 - d_y + 4 * 2^-24)^gamma - (1 - d_y)^gamma]."""
    y = np.asarray(y)
    d_y = ref.affinity_similarities(x, W, sigma)[np.arange(len(y)), y]
    cw = np.ones(C) if w is None else ref.f64(w)
    base = ref.affinity_loss(x, y, W, sigma, margin, sw)
    delta = 4 * 2.0 ** -24
    return cw[y] * base * (np.power(1 - d_y + delta, gamma)
                           - np.power(1 - d_y, gamma))


def _affinity_checks(head, x, y, W, sigma, loss_fn, length, want_loss,
                     extra_atol=0.0):
    """Loss, gradients, scores and predictions of an affinity-type head."""
    head.prototypes.assign(W.astype(np.float32))
    loss, grads = loss_and_grads(head, x, y, [head.prototypes])
    assert_finite(loss, *grads, what="affinity")
    check_loss(loss, want_loss,
               atol=1e-5 * max(1.0, np.abs(want_loss).max()) + extra_atol)
    eps = 1e-5 * length
    check_grad(grads[0], ref.numerical_grad(
        lambda v: loss_fn(v, W).sum(), x, eps), "dx", atol=1e-7 / length)
    check_grad(grads[1], ref.numerical_grad(
        lambda v: loss_fn(x, v).sum(), W, eps), "dW", atol=1e-7 / length)
    xt = tf.constant(x, tf.float32)
    d = ref.affinity_similarities(x, W, sigma)
    out = head(xt)
    assert out.dtype == tf.float32
    np.testing.assert_allclose(to_np(out), d, rtol=1e-4, atol=1e-6)
    check_predict(head.predict(xt), d)
    assert_update_noop(head, x, y)


@pytest.mark.parametrize("case", AFF_CASES)
@pytest.mark.parametrize("m", [1, 3])
@pytest.mark.parametrize("sigma", SIGMAS)
def test_affinity(H, sigma, m, case):
    x, y, W, length = affinity_case(40, case, sigma, m)
    # keep the spread term O(1) on scaled data so the hinge stays visible
    sw = 1.0 / sigma ** 2 if case == "scaled" else 1.0
    head = H.Affinity(num_classes=C, embedding_dim=D, num_centers=m,
                      sigma=sigma, margin=0.75, spread_weight=sw, seed=0)
    assert tuple(head.prototypes.shape) == W.shape

    def loss_fn(xx, WW):
        return ref.affinity_loss(xx, y, WW, sigma, 0.75, sw)

    _affinity_checks(head, x, y, W, sigma, loss_fn, length, loss_fn(x, W))


@pytest.mark.parametrize("counts", [None, "imbalanced"])
@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
@pytest.mark.parametrize("case", AFF_CASES)
@pytest.mark.parametrize("m", [1, 3])
@pytest.mark.parametrize("sigma", SIGMAS)
def test_cfal(H, sigma, m, case, gamma, counts):
    x, y, W, length = affinity_case(50, case, sigma, m)
    sw = 1.0 / sigma ** 2 if case == "scaled" else 1.0
    kw = {}
    w = None
    if counts == "imbalanced":
        kw = dict(class_counts=IMBALANCED, beta=0.999)
        w = ref.class_balanced_weights(IMBALANCED, 0.999)
    head = H.CFAL(num_classes=C, embedding_dim=D, num_centers=m, sigma=sigma,
                  margin=0.75, gamma=gamma, spread_weight=sw, seed=0, **kw)
    assert tuple(head.prototypes.shape) == W.shape
    # the modulating factor is a stop-gradient constant: evaluate it at the
    # base point and hold it fixed in the finite differences
    factor = ref.cfal_factor(x, y, W, sigma, gamma, w)

    def loss_fn(xx, WW):
        return ref.cfal_loss(xx, y, WW, sigma, 0.75, gamma, w, sw,
                             factor=factor)

    want = ref.cfal_loss(x, y, W, sigma, 0.75, gamma, w, sw)
    # in the "hard" case row 1 sits on its prototype: d_y = 1, factor 0,
    # reference loss exactly 0 (up to the float32 allowance)
    _affinity_checks(head, x, y, W, sigma, loss_fn, length, want,
                     extra_atol=cfal_factor_allowance(
                         x, y, W, sigma, 0.75, gamma, w, sw))


@pytest.mark.parametrize("m", [1, 3])
def test_cfal_all_on_prototypes(H, m):
    """Every embedding exactly on a prototype of its class: d_y = 1, so the
    factor (1 - d_y)^gamma is 0; with gamma = 0.5 its derivative would be
    infinite, which must not leak (stop-gradient) into NaN gradients."""
    rng = np.random.default_rng(60)
    W = r32(rng.normal(size=(C, m, D)))
    y = make_labels(rng)
    x = W[y, rng.integers(0, m, N)]
    W = W[:, 0] if m == 1 else W
    for gamma in (0.0, 0.5, 2.0):
        head = H.CFAL(num_classes=C, embedding_dim=D, num_centers=m,
                      sigma=1.0, gamma=gamma, class_counts=IMBALANCED,
                      seed=0)
        head.prototypes.assign(W.astype(np.float32))
        loss, grads = loss_and_grads(head, x, y, [head.prototypes])
        assert_finite(loss, *grads, what=f"cfal gamma={gamma}")
        w = ref.class_balanced_weights(IMBALANCED, 0.9999)
        want = ref.cfal_loss(x, y, W, 1.0, 0.75, gamma, w)
        if gamma > 0:
            assert np.all(want == 0.0)
        check_loss(loss, want, atol=1e-5 + cfal_factor_allowance(
            x, y, W, 1.0, 0.75, gamma, w, 1.0))
        if gamma == 2.0:       # factor ~ (float32 error)^2: no gradient
            assert np.max(np.abs(to_np(grads[0]))) < 1e-6


@pytest.mark.parametrize("norm", [1.0, 10.0])
@pytest.mark.parametrize("sigma", [1e-2, 1.0])
@pytest.mark.parametrize("m", [1, 3])
def test_affinity_on_prototype_is_one(H, m, sigma, norm):
    """An embedding exactly equal to one of its class prototypes has
    ||x - w||^2 = 0, so d_y = exp(0) = 1 exactly; float32 should give 1 up
    to the 1e-4 relative tolerance used for affinities elsewhere, whatever
    the embedding norm (the squared distance must not inherit rounding
    errors of size ulp(||x||^2) / sigma)."""
    rng = np.random.default_rng(62)
    W = r32(rng.normal(size=(C, m, D)) * norm / np.sqrt(D))
    y = make_labels(rng)
    x = W[y, rng.integers(0, m, N)]
    W = W[:, 0] if m == 1 else W
    head = H.Affinity(num_classes=C, embedding_dim=D, num_centers=m,
                      sigma=sigma, seed=0)
    head.prototypes.assign(W.astype(np.float32))
    d_y = to_np(head(tf.constant(x, tf.float32)))[np.arange(N), y]
    np.testing.assert_allclose(d_y, 1.0, rtol=0, atol=1e-4)


@pytest.mark.parametrize("name", ["Affinity", "CFAL"])
@pytest.mark.parametrize("sigma", SIGMAS)
def test_affinity_far_points_finite(H, name, sigma):
    """Far-away embeddings (affinity underflow to exactly 0) and an
    all-zero batch stay finite; values still match the reference."""
    rng = np.random.default_rng(61)
    W = r32(rng.normal(size=(C, 3, D)))
    y = make_labels(rng)
    for x in (r32(rng.normal(size=(N, D)) * 50.0), np.zeros((N, D))):
        head = getattr(H, name)(num_classes=C, embedding_dim=D, num_centers=3,
                                sigma=sigma, seed=0)
        head.prototypes.assign(W.astype(np.float32))
        loss, grads = loss_and_grads(head, x, y, [head.prototypes])
        assert_finite(loss, *grads, what=name)
        want = (ref.affinity_loss(x, y, W, sigma) if name == "Affinity" else
                ref.cfal_loss(x, y, W, sigma))
        check_loss(loss, want, atol=1e-5 * max(1.0, np.abs(want).max()))


# ==========================================================================
# half-precision embeddings
# ==========================================================================

def _half_heads(H):
    return {
        "softmax": H.Softmax(num_classes=C, embedding_dim=D, seed=0),
        "focal": H.Focal(num_classes=C, embedding_dim=D,
                         class_counts=IMBALANCED, seed=0),
        "arcface": H.ArcFace(num_classes=C, embedding_dim=D, scale=16.0,
                             seed=0),
        "cosface": H.CosFace(num_classes=C, embedding_dim=D, scale=16.0,
                             seed=0),
        "sphereface": H.SphereFace(num_classes=C, embedding_dim=D,
                                   scale=16.0, seed=0),
        "center": H.CenterLoss(num_classes=C, embedding_dim=D, seed=0),
        "affinity": H.Affinity(num_classes=C, embedding_dim=D, num_centers=3,
                               sigma=4.0, seed=0),
        "cfal": H.CFAL(num_classes=C, embedding_dim=D, num_centers=3,
                       sigma=4.0, class_counts=IMBALANCED, seed=0),
    }


HALF_NAMES = ["softmax", "focal", "arcface", "cosface", "sphereface",
              "center", "affinity", "cfal"]


@pytest.mark.parametrize("dtype", [tf.float16, tf.bfloat16],
                         ids=["float16", "bfloat16"])
@pytest.mark.parametrize("name", HALF_NAMES)
def test_half_precision_embeddings(H, name, dtype):
    """Half-precision embeddings: float32 losses/scores equal to those of
    the same (rounded) embeddings given as float32, and close to the
    unrounded float32 result."""
    head = _half_heads(H)[name]
    rng = np.random.default_rng(70)
    x = rng.normal(size=(N, D)).astype(np.float32)
    y = tf.constant(make_labels(rng), tf.int32)
    x_half = tf.cast(tf.constant(x), dtype)
    x_round = tf.cast(x_half, tf.float32)
    loss_half = head.loss(x_half, y)
    assert loss_half.dtype == tf.float32
    np.testing.assert_allclose(loss_half.numpy(),
                               head.loss(x_round, y).numpy(),
                               rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(loss_half.numpy(),
                               head.loss(tf.constant(x), y).numpy(),
                               rtol=0.1, atol=0.1)
    out = head(x_half)
    assert out.dtype == tf.float32
    np.testing.assert_allclose(out.numpy(), head(x_round).numpy(),
                               rtol=1e-4, atol=1e-5)
    pred = head.predict(x_half)
    assert pred.dtype == tf.int32
    np.testing.assert_array_equal(pred.numpy(), head.predict(x_round).numpy())
    with tf.GradientTape() as tape:
        tape.watch(x_half)
        total = tf.reduce_sum(head.loss(x_half, y))
    g = tape.gradient(total, [x_half] + list(head.trainable_variables))
    assert g[0] is not None and g[0].dtype == dtype
    assert_finite(*[t for t in g if t is not None], what=name)

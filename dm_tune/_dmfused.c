/* Fused CPU kernels for small batches: DM's logit gradient of a mini-batch (dm_grad), and every
 * member's loss of a population (pop_grad). One loop computes both: a single run's DM is a
 * population of one DM member. At the end of the file: a population CNN block's BatchNorm,
 * max-pooling and ReLU (bn_row_stats, bn_pool_relu, bn_pool_relu_backward).
 *
 * DM, exactly what dm_tune._weighting._dm_parts_torch computes (DM_METHOD.md section 3):
 *   p_i       = softmax(z_i)[y_i]                      (via log-sum-exp, in double)
 *   log w_i   = beta p_i^lam (1 - p_i)
 *   share_i   = w_i / sum_j w_j                       (a softmax over log w: no overflow)
 *   grad_i    = share_i / (2 (1 - p_i) + 1e-6) * (softmax(z_i) - onehot(y_i))
 *   display   = -sum_i share_i log p_i
 * with 1 - p_i, also the labelled entry of softmax - onehot, taken as the other classes'
 * probabilities sum to (right to rounding near p = 1, where 1 - p from log p is not). The
 * other methods of a population: see pop_grad below. Inputs float32 or float64
 * (contiguous, row-major), targets int64; outputs in the input's dtype. Every intermediate is a
 * double, except the softmax numerators, which wait between the two passes in the gradient
 * buffer (one more rounding for float32 input).
 *
 * Why it exists: on a CPU, a training step of a small model (the embedded digits MLP) takes
 * ~0.4 ms, and the ~15 tensor operations of the torch version of DM cost ~50 us of dispatch and
 * allocation between them (a population's ~30, 0.3-1.4 ms). One call here costs about as much as
 * cross-entropy's own two kernels. Large batches and GPUs use the torch versions (see _native.py).
 *
 * Python signatures (no argument checking beyond types; the caller validates shapes and dtypes):
 *   dm_grad(z_ptr, y_ptr, n, c, lam, beta, grad_ptr, share_ptr, display_ptr, is_double) -> None
 *     writing grad [n, c], share [n] and the display loss (one element);
 *   pop_grad(z_ptr, y_ptr, K, n, c, knobs_ptr, grad_ptr, share_ptr, display_ptr, tiny, is_double)
 *     writing grad [K, n, c], share [K, n] and display [K].
 * Both raise IndexError for a target outside [0, c).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* CCE's weight 2(1-p) gets this added before it is divided out, as in the released DM code. */
#define CCE_WEIGHT_EPS 1e-6
/* Rows whose work buffers fit on the stack (5 doubles per row). */
#define STACK_ROWS 512

/* Pass 1 leaves exp(z_ij - max_j z_ij) in the gradient buffer (each exponential is computed
 * once); pass 2 scales it in place. Returns -1, or the first (member * n + row) whose target is
 * out of range.
 *
 * A population's losses, [K, n, c] logits with each member's own method, in one call: what
 * dm_tune._poplosses.population_loss_parts computes (see there for the formulas), in double
 * whatever the logits' dtype (for float32 plain members on examples with 1 - p below ~1e-6, where
 * torch takes float32's 1 - p, the rows then differ by up to float32's absolute rounding), per
 * member k with knobs row k = (kind, lam, beta, a, b, q, r, alpha, gamma, delta):
 *   kind DM (0):         share = softmax over the batch of beta p^lam (1-p); scale = share / (2(1-p) + eps)
 *   kind PLAIN (1):      share = w / sum(w), w = 2 (1-p) m(p); scale = m(p) / n
 *   kind NORMALISED (2): share = w / sum(w), w = 2 q m(p) with q = 1 - p as the other classes'
 *                        probabilities sum to (also in m); scale = m(p) / sum(w)
 * with m(p) = a + b p^q (1-p)^r, grad = scale (softmax - onehot), and the display loss
 * mean(alpha (-log p) + gamma (1 - p^q) / q + delta (1-p)^2) for PLAIN members, -sum(share log p)
 * for the others. `tiny` is the smallest normal number of the logits' dtype (the sum of the
 * weights is clamped to it, as the torch version does). Work: 5 doubles per row. */
#define KNOBS 10
#define DEFINE_LOSS_KERNEL(NAME, T)                                                             \
    static Py_ssize_t NAME(const T *z, const int64_t *y, Py_ssize_t members, Py_ssize_t n,     \
                           Py_ssize_t c, const double *knobs, double tiny, T *grad, T *share,  \
                           T *display, double *work) {                                        \
        double *rowsum = work, *logp = work + n, *pm1 = work + 2 * n, *w = work + 3 * n;       \
        double *mult = work + 4 * n;                                                           \
        for (Py_ssize_t k = 0; k < members; ++k) {                                             \
            const double *kn = knobs + k * KNOBS;                                              \
            const int kind = (int)kn[0];                                                       \
            const double lam = kn[1], beta = kn[2], a = kn[3], b = kn[4], q = kn[5], r = kn[6];  \
            const double alpha = kn[7], gamma = kn[8], delta = kn[9];                          \
            const T *zk = z + k * n * c;                                                       \
            const int64_t *yk = y + k * n;                                                     \
            T *gk = grad + k * n * c, *sk = share + k * n;                                     \
            double wmax = -INFINITY, wsum = 0.0, value = 0.0;                                  \
            for (Py_ssize_t i = 0; i < n; ++i) {                                               \
                const T *zi = zk + i * c;                                                      \
                T *gi = gk + i * c;                                                            \
                const int64_t t = yk[i];                                                       \
                if (t < 0 || t >= c) return k * n + i;                                         \
                double m = zi[0];                                                              \
                for (Py_ssize_t j = 1; j < c; ++j)                                             \
                    if (zi[j] > m) m = zi[j];                                                  \
                double s = 0.0, others = 0.0;                                                  \
                for (Py_ssize_t j = 0; j < c; ++j) {                                           \
                    const double e = exp((double)zi[j] - m);                                   \
                    gi[j] = (T)e;                                                              \
                    s += e;                                                                    \
                    if (j != t) others += e;                                                   \
                }                                                                              \
                rowsum[i] = s;                                                                 \
                double lp = (double)zi[t] - m - log(s);                                        \
                if (lp > 0.0) lp = 0.0;                                                        \
                logp[i] = lp;                                                                  \
                pm1[i] = expm1(lp);                                                            \
                const double p = exp(lp), omp = -pm1[i];                                       \
                /* DM and -DN: 1 - p as the other classes sum to (right to rounding where p is   \
                 * close to 1, exact where it rounds to 1), as the torch paths take it */      \
                if (kind != 1) pm1[i] = -(others / s);                                         \
                if (kind == 0) {                                                               \
                    /* p^lam as exp(lam log p) where p is below double's normal range (log p  \
                     * under about -708): p^lam of a small lam is not 0 there (0.45 at -800,     \
                     * lam 0.001), as the torch path (power_of_p) takes it */                  \
                    const double plam = lam == 0.0 ? 1.0 : (lam == 1.0 ? p                     \
                                        : (p >= DBL_MIN ? pow(p, lam) : exp(lam * lp)));       \
                    w[i] = plam * -beta * pm1[i];                                              \
                    if (w[i] > wmax) wmax = w[i];                                              \
                } else {                                                                       \
                    /* (the powers and the GCE term only where they count: libm calls per row) */ \
                    /* -DN: that 1 - p in the multiplier and as the labelled entry, so the rows' \
                     * L1 norms are 2 q exactly */                                             \
                    const double om = -pm1[i];                                                 \
                    double mp = a;                                                             \
                    if (b != 0.0) {                                                            \
                        const double pq = q == 1.0 ? p : (p >= DBL_MIN ? pow(p, q) : exp(q * lp)); \
                        mp += b * pq * (r == 0.0 ? 1.0 : (r == 1.0 ? om : pow(om, r)));        \
                    }                                                                          \
                    mult[i] = mp;                                                              \
                    w[i] = -2.0 * pm1[i] * mp;                                                 \
                    wsum += w[i];                                                              \
                    if (alpha != 0.0) value += alpha * -lp; /* (not 0 * inf where p is 0) */   \
                    value += delta * omp * omp;                                                \
                    if (gamma != 0.0) value += gamma * -expm1(q * lp) / q;                     \
                }                                                                              \
            }                                                                                  \
            double total = 0.0;                                                                \
            if (kind == 0) {                                                                   \
                for (Py_ssize_t i = 0; i < n; ++i) {                                           \
                    w[i] = exp(w[i] - wmax);                                                   \
                    total += w[i];                                                             \
                }                                                                              \
            } else {                                                                           \
                total = wsum < tiny ? tiny : wsum; /* torch's clamp_min (a NaN stays NaN) */   \
            }                                                                                  \
            double loss = 0.0;                                                                 \
            for (Py_ssize_t i = 0; i < n; ++i) {                                               \
                T *gi = gk + i * c;                                                            \
                const double sh = w[i] / total;                                                \
                const double scale = kind == 1 ? mult[i] / (double)n                           \
                                   : kind == 0 ? sh / (-2.0 * pm1[i] + CCE_WEIGHT_EPS)         \
                                               : mult[i] / total; /* -DN: m over the mass */   \
                const double row_scale = scale / rowsum[i];                                    \
                for (Py_ssize_t j = 0; j < c; ++j) gi[j] = (T)((double)gi[j] * row_scale);     \
                gi[yk[i]] = (T)(pm1[i] * scale);                                               \
                sk[i] = (T)sh;                                                                 \
                if (sh != 0.0) loss -= sh * logp[i];                                           \
            }                                                                                  \
            display[k] = (T)(kind == 1 ? value / (double)n : loss);                            \
        }                                                                                      \
        return -1;                                                                             \
    }

DEFINE_LOSS_KERNEL(loss_kernel_f32, float)
DEFINE_LOSS_KERNEL(loss_kernel_f64, double)

/* The kernel on the work buffer (on the stack for up to STACK_ROWS rows, without the GIL); -1
 * when out of memory (a Python error set), else the kernel's result. */
static Py_ssize_t run(void *z, void *y, Py_ssize_t members, Py_ssize_t n, Py_ssize_t c, const double *knobs,
                      double tiny, void *grad, void *share, void *display, int is_double, int *failed) {
    double stack_work[5 * STACK_ROWS];
    double *work = n <= STACK_ROWS ? stack_work : malloc(sizeof(double) * 5 * (size_t)n);
    *failed = work == NULL;
    if (work == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    Py_ssize_t bad;
    Py_BEGIN_ALLOW_THREADS
    bad = is_double ? loss_kernel_f64(z, y, members, n, c, knobs, tiny, grad, share, display, work)
                    : loss_kernel_f32(z, y, members, n, c, knobs, tiny, grad, share, display, work);
    Py_END_ALLOW_THREADS
    if (work != stack_work) free(work);
    return bad;
}

static PyObject *dm_grad(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 10) {
        PyErr_SetString(PyExc_TypeError, "dm_grad takes 10 arguments");
        return NULL;
    }
    void *z = PyLong_AsVoidPtr(args[0]);
    void *y = PyLong_AsVoidPtr(args[1]);
    const Py_ssize_t n = PyLong_AsSsize_t(args[2]);
    const Py_ssize_t c = PyLong_AsSsize_t(args[3]);
    const double lam = PyFloat_AsDouble(args[4]);
    const double beta = PyFloat_AsDouble(args[5]);
    void *grad = PyLong_AsVoidPtr(args[6]);
    void *share = PyLong_AsVoidPtr(args[7]);
    void *display = PyLong_AsVoidPtr(args[8]);
    const int is_double = PyObject_IsTrue(args[9]);
    if (PyErr_Occurred()) return NULL;
    if (n < 1 || c < 2) {
        PyErr_SetString(PyExc_ValueError, "dm_grad needs n >= 1 rows and c >= 2 classes");
        return NULL;
    }
    /* One DM member: kind 0, lam, beta; the other methods' coefficients unused. */
    const double knobs[KNOBS] = {0.0, lam, beta, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0};
    int failed;
    const Py_ssize_t bad = run(z, y, 1, n, c, knobs, 0.0, grad, share, display, is_double, &failed);
    if (failed) return NULL;
    if (bad >= 0) {
        PyErr_Format(PyExc_IndexError, "target %lld of example %zd is out of range for %zd classes",
                     (long long)((const int64_t *)y)[bad], bad, c);
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *pop_grad(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 11) {
        PyErr_SetString(PyExc_TypeError, "pop_grad takes 11 arguments");
        return NULL;
    }
    void *z = PyLong_AsVoidPtr(args[0]);
    void *y = PyLong_AsVoidPtr(args[1]);
    const Py_ssize_t members = PyLong_AsSsize_t(args[2]);
    const Py_ssize_t n = PyLong_AsSsize_t(args[3]);
    const Py_ssize_t c = PyLong_AsSsize_t(args[4]);
    const double *knobs = PyLong_AsVoidPtr(args[5]);
    void *grad = PyLong_AsVoidPtr(args[6]);
    void *share = PyLong_AsVoidPtr(args[7]);
    void *display = PyLong_AsVoidPtr(args[8]);
    const double tiny = PyFloat_AsDouble(args[9]);
    const int is_double = PyObject_IsTrue(args[10]);
    if (PyErr_Occurred()) return NULL;
    if (members < 1 || n < 1 || c < 2) {
        PyErr_SetString(PyExc_ValueError, "pop_grad needs K >= 1 members, n >= 1 rows and c >= 2 classes");
        return NULL;
    }
    int failed;
    const Py_ssize_t bad = run(z, y, members, n, c, knobs, tiny, grad, share, display, is_double, &failed);
    if (failed) return NULL;
    if (bad >= 0) {
        PyErr_Format(PyExc_IndexError, "target %lld of member %zd, example %zd is out of range for %zd classes",
                     (long long)((const int64_t *)y)[bad], bad / n, bad % n, c);
        return NULL;
    }
    Py_RETURN_NONE;
}

/* --- BatchNorm, MaxPool1d(2) and ReLU of a population's 1-D CNN, fused ------------------------
 *
 * In a population's [K, C, L, B] layout (dm_tune._popmodels) every (member, channel) is one row
 * of L * B contiguous floats, and a convolution block's BatchNorm (batch statistics), max-pooling
 * of pairs along L and ReLU act on it alone. torch runs them as ~10 passes over the activations,
 * each a few megabytes that leave the L2; here they are three passes forward and two backward,
 * over one row at a time (tens of kilobytes, cached between the passes). Float32 only; the caller
 * (dm_tune._popmodels) keeps torch's operators as the reference and for everything else.
 *
 *   bn_row_stats(x_ptr, rows, n, mean_ptr, var_ptr)
 *     mean and biased variance (float64 [rows]) of each row of n floats, two passes;
 *   bn_pool_relu(x_ptr, rows, L, B, alpha_ptr, beta_ptr, out_ptr)
 *     out[r, l, b] = relu(max(y[r, 2l, b], y[r, 2l+1, b])), y = x * alpha[r] + beta[r]
 *     (out [rows, L/2, B]; an odd last position is dropped, as MaxPool1d(2) does; the second of a
 *     pair wins only if it is larger, as in dm_tune.models.pair_max);
 *   bn_pool_relu_backward(x_ptr, dy_ptr, rows, L, B, alpha_ptr, beta_ptr, mean_ptr, invstd_ptr,
 *                         weight_ptr, dx_ptr, sum_ptr, dot_ptr, dxsum_ptr)
 *     the gradient of the input of the above with y the training-mode BatchNorm (batch
 *     statistics: alpha = weight * invstd, beta = bias - mean * alpha); also per row (float64)
 *     the sum of the gradient reaching y (the BatchNorm bias's gradient), its dot product with
 *     x - mean (times invstd: the BatchNorm weight's gradient) and the sum of the input's
 *     gradient (that of a convolution's bias added to x). As torch's batch_norm_backward:
 *       dx = (g - mean(g) - (x - mean) invstd^2 mean((x - mean) g)) invstd weight.
 * They run on the calling thread, the GIL released. */

struct bn_ctx {
    const float *x, *dy, *alpha, *beta, *mean, *invstd, *weight;
    float *out, *dx;
    double *dmean, *dvar, *sum, *dot, *dxsum;
    Py_ssize_t n, length, batch;
};

/* The row reductions: float sums, vectorised (`omp simd reduction`, compiled with
 * -fopenmp-simd: no OpenMP runtime, only leave to reorder these additions), folded into a double
 * every BLOCK elements. */
#define BLOCK 1024

static double sum_of(const float *x, Py_ssize_t n) {
    double s = 0.0;
    for (Py_ssize_t lo = 0; lo < n; lo += BLOCK) {
        const Py_ssize_t hi = lo + BLOCK < n ? lo + BLOCK : n;
        float part = 0.0f;
#pragma omp simd reduction(+ : part)
        for (Py_ssize_t i = lo; i < hi; ++i) part += x[i];
        s += part;
    }
    return s;
}

/* sum((x - mean)^2) */
static double squares_about(const float *x, Py_ssize_t n, float mean) {
    double s = 0.0;
    for (Py_ssize_t lo = 0; lo < n; lo += BLOCK) {
        const Py_ssize_t hi = lo + BLOCK < n ? lo + BLOCK : n;
        float part = 0.0f;
#pragma omp simd reduction(+ : part)
        for (Py_ssize_t i = lo; i < hi; ++i) part += (x[i] - mean) * (x[i] - mean);
        s += part;
    }
    return s;
}

static void stats_rows(const struct bn_ctx *c, Py_ssize_t rows) {
    for (Py_ssize_t r = 0; r < rows; ++r) {
        const float *x = c->x + r * c->n;
        const double mean = sum_of(x, c->n) / (double)c->n;
        /* about the float mean: its rounding error adds its square, ~1e-14 of the mean's, to the
         * variance */
        c->dmean[r] = mean;
        c->dvar[r] = squares_about(x, c->n, (float)mean) / (double)c->n;
    }
}

static void forward_rows(const struct bn_ctx *c, Py_ssize_t rows) {
    const Py_ssize_t half = c->length / 2, batch = c->batch;
    for (Py_ssize_t r = 0; r < rows; ++r) {
        const float a = c->alpha[r], b = c->beta[r];
        const float *x = c->x + r * c->length * batch;
        float *out = c->out + r * half * batch;
        for (Py_ssize_t l = 0; l < half; ++l) {
            const float *first = x + 2 * l * batch, *second = first + batch;
            float *o = out + l * batch;
            for (Py_ssize_t i = 0; i < batch; ++i) {
                const float u = first[i] * a + b, v = second[i] * a + b;
                const float m = v > u ? v : u;
                o[i] = m > 0.0f ? m : 0.0f;
            }
        }
    }
}

static inline uint32_t bits_of(float x) {
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    return u;
}

static inline float float_of(uint32_t u) {
    float x;
    memcpy(&x, &u, sizeof x);
    return x;
}

static void backward_rows(const struct bn_ctx *c, Py_ssize_t rows) {
    const Py_ssize_t half = c->length / 2, batch = c->batch, n = c->length * batch;
    for (Py_ssize_t r = 0; r < rows; ++r) {
        const float a = c->alpha[r], b = c->beta[r], mean = c->mean[r], invstd = c->invstd[r];
        const float *x = c->x + r * n, *dy = c->dy + r * half * batch;
        float *dx = c->dx + r * n;
        double s = 0.0, dot = 0.0;
        /* pass 1: the gradient reaching y (at each pair's winner, where the ReLU passed it), its
         * sum and its dot product with x - mean (float sums over one pair of positions, B
         * elements, folded into the doubles) */
        for (Py_ssize_t l = 0; l < half; ++l) {
            const float *first = x + 2 * l * batch, *second = first + batch;
            const float *g = dy + l * batch;
            float *to_first = dx + 2 * l * batch, *to_second = to_first + batch;
            float part = 0.0f, partd = 0.0f;
#pragma omp simd reduction(+ : part, partd)
            for (Py_ssize_t i = 0; i < batch; ++i) {
                const float u = first[i] * a + b, v = second[i] * a + b;
                const float m = v > u ? v : u;
                /* bit masks, not selects: GCC vectorises these (g passes where m > 0, to the winner) */
                const uint32_t pass = -(uint32_t)(m > 0.0f), wins = -(uint32_t)(v > u);
                const uint32_t gi = bits_of(g[i]) & pass;
                to_first[i] = float_of(gi & ~wins);
                to_second[i] = float_of(gi & wins);
                const float xw = float_of((bits_of(second[i]) & wins) | (bits_of(first[i]) & ~wins));
                part += float_of(gi);
                partd += (xw - mean) * float_of(gi);
            }
            s += part;
            dot += partd;
        }
        for (Py_ssize_t i = 2 * half * batch; i < n; ++i) dx[i] = 0.0f;
        /* pass 2: through the batch statistics; and the sum of the input's gradient (a bias
         * added to x before the BatchNorm has that gradient) */
        const float k = (float)(dot * (double)invstd * (double)invstd / (double)n), gmean = (float)(s / (double)n);
        const float scale = invstd * c->weight[r];
        double total = 0.0;
        for (Py_ssize_t lo = 0; lo < n; lo += BLOCK) {
            const Py_ssize_t hi = lo + BLOCK < n ? lo + BLOCK : n;
            float part = 0.0f;
#pragma omp simd reduction(+ : part)
            for (Py_ssize_t i = lo; i < hi; ++i) {
                dx[i] = (dx[i] - (x[i] - mean) * k - gmean) * scale;
                part += dx[i];
            }
            total += part;
        }
        c->sum[r] = s;
        c->dot[r] = dot;
        c->dxsum[r] = total;
    }
}

static PyObject *bn_row_stats(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError, "bn_row_stats takes 5 arguments");
        return NULL;
    }
    struct bn_ctx c = {0};
    c.x = PyLong_AsVoidPtr(args[0]);
    const Py_ssize_t rows = PyLong_AsSsize_t(args[1]);
    c.n = PyLong_AsSsize_t(args[2]);
    c.dmean = PyLong_AsVoidPtr(args[3]);
    c.dvar = PyLong_AsVoidPtr(args[4]);
    if (PyErr_Occurred()) return NULL;
    if (rows < 1 || c.n < 1) {
        PyErr_SetString(PyExc_ValueError, "bn_row_stats needs rows >= 1 and n >= 1");
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    stats_rows(&c, rows);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyObject *bn_pool_relu(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 7) {
        PyErr_SetString(PyExc_TypeError, "bn_pool_relu takes 7 arguments");
        return NULL;
    }
    struct bn_ctx c = {0};
    c.x = PyLong_AsVoidPtr(args[0]);
    const Py_ssize_t rows = PyLong_AsSsize_t(args[1]);
    c.length = PyLong_AsSsize_t(args[2]);
    c.batch = PyLong_AsSsize_t(args[3]);
    c.alpha = PyLong_AsVoidPtr(args[4]);
    c.beta = PyLong_AsVoidPtr(args[5]);
    c.out = PyLong_AsVoidPtr(args[6]);
    if (PyErr_Occurred()) return NULL;
    if (rows < 1 || c.length < 2 || c.batch < 1) {
        PyErr_SetString(PyExc_ValueError, "bn_pool_relu needs rows >= 1, L >= 2 and B >= 1");
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    forward_rows(&c, rows);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyObject *bn_pool_relu_backward(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 14) {
        PyErr_SetString(PyExc_TypeError, "bn_pool_relu_backward takes 14 arguments");
        return NULL;
    }
    struct bn_ctx c = {0};
    c.x = PyLong_AsVoidPtr(args[0]);
    c.dy = PyLong_AsVoidPtr(args[1]);
    const Py_ssize_t rows = PyLong_AsSsize_t(args[2]);
    c.length = PyLong_AsSsize_t(args[3]);
    c.batch = PyLong_AsSsize_t(args[4]);
    c.alpha = PyLong_AsVoidPtr(args[5]);
    c.beta = PyLong_AsVoidPtr(args[6]);
    c.mean = PyLong_AsVoidPtr(args[7]);
    c.invstd = PyLong_AsVoidPtr(args[8]);
    c.weight = PyLong_AsVoidPtr(args[9]);
    c.dx = PyLong_AsVoidPtr(args[10]);
    c.sum = PyLong_AsVoidPtr(args[11]);
    c.dot = PyLong_AsVoidPtr(args[12]);
    c.dxsum = PyLong_AsVoidPtr(args[13]);
    if (PyErr_Occurred()) return NULL;
    if (rows < 1 || c.length < 2 || c.batch < 1) {
        PyErr_SetString(PyExc_ValueError, "bn_pool_relu_backward needs rows >= 1, L >= 2 and B >= 1");
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    backward_rows(&c, rows);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"bn_row_stats", (PyCFunction)(void (*)(void))bn_row_stats, METH_FASTCALL,
     "bn_row_stats(x_ptr, rows, n, mean_ptr, var_ptr): each row's mean and biased "
     "variance, as float64 (see _dmfused.c)."},
    {"bn_pool_relu", (PyCFunction)(void (*)(void))bn_pool_relu, METH_FASTCALL,
     "bn_pool_relu(x_ptr, rows, L, B, alpha_ptr, beta_ptr, out_ptr): a population CNN "
     "block's BatchNorm, MaxPool1d(2) and ReLU in one pass (see _dmfused.c)."},
    {"bn_pool_relu_backward", (PyCFunction)(void (*)(void))bn_pool_relu_backward, METH_FASTCALL,
     "bn_pool_relu_backward(x_ptr, dy_ptr, rows, L, B, alpha_ptr, beta_ptr, mean_ptr, invstd_ptr, "
     "weight_ptr, dx_ptr, sum_ptr, dot_ptr, dxsum_ptr): its gradient (see _dmfused.c)."},
    {"dm_grad", (PyCFunction)(void (*)(void))dm_grad, METH_FASTCALL,
     "dm_grad(z_ptr, y_ptr, n, c, lam, beta, grad_ptr, share_ptr, display_ptr, is_double): DM's "
     "logit gradient, shares and display loss of a CPU mini-batch (see _dmfused.c)."},
    {"pop_grad", (PyCFunction)(void (*)(void))pop_grad, METH_FASTCALL,
     "pop_grad(z_ptr, y_ptr, K, n, c, knobs_ptr, grad_ptr, share_ptr, display_ptr, tiny, is_double): "
     "every population member's logit gradient, shares and display loss (see _dmfused.c)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_dmfused",
                                    "Fused CPU kernels: DM's and a population's logit gradients, a population CNN block.", -1, methods};

PyMODINIT_FUNC PyInit__dmfused(void) { return PyModule_Create(&module); }

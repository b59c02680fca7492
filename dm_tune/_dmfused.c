/* Fused CPU kernels for small batches: DM's logit gradient of a mini-batch (dm_grad), and every
 * member's loss of a population (pop_grad). One loop computes both: a single run's DM is a
 * population of one DM member.
 *
 * DM, exactly what dm_tune._weighting._dm_parts_torch computes (DM_METHOD.md section 3):
 *   p_i       = softmax(z_i)[y_i]                      (via log-sum-exp, in double)
 *   log w_i   = beta p_i^lam (1 - p_i)
 *   share_i   = w_i / sum_j w_j                       (a softmax over log w: no overflow)
 *   grad_i    = share_i / (2 (1 - p_i) + 1e-6) * (softmax(z_i) - onehot(y_i))
 *   display   = -sum_i share_i log p_i
 * with the labelled entry of softmax - onehot written as expm1(log p) (no cancellation near
 * p = 1). The other methods of a population: see pop_grad below. Inputs float32 or float64
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
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

/* CCE's weight 2(1-p) gets this added before it is divided out, as in the released DM code. */
#define CCE_WEIGHT_EPS 1e-6
/* Rows whose work buffers fit on the stack (5 doubles per row). */
#define STACK_ROWS 512

/* Pass 1 leaves exp(z_ij - max_j z_ij) in the gradient buffer (each exponential is computed
 * once); pass 2 scales it in place. Returns -1, or the first (member * n + row) whose target is
 * out of range.
 *
 * A population's losses, [K, n, c] logits with each member's own method, in one call: exactly
 * what dm_tune._poplosses.population_loss_parts computes (see there for the formulas), per
 * member k with knobs row k = (kind, lam, beta, a, b, q, r, alpha, gamma, delta):
 *   kind DM (0):         share = softmax over the batch of beta p^lam (1-p); scale = share / (2(1-p) + eps)
 *   kind PLAIN (1):      share = w / sum(w), w = 2 (1-p) m(p); scale = m(p) / n
 *   kind NORMALISED (2): share = w / sum(w); scale = share / (2(1-p) + eps)
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
                double s = 0.0;                                                                \
                for (Py_ssize_t j = 0; j < c; ++j) {                                           \
                    const double e = exp((double)zi[j] - m);                                   \
                    gi[j] = (T)e;                                                              \
                    s += e;                                                                    \
                }                                                                              \
                rowsum[i] = s;                                                                 \
                double lp = (double)zi[t] - m - log(s);                                        \
                if (lp > 0.0) lp = 0.0;                                                        \
                logp[i] = lp;                                                                  \
                pm1[i] = expm1(lp);                                                            \
                const double p = exp(lp), omp = -pm1[i];                                       \
                if (kind == 0) {                                                               \
                    const double plam = lam == 0.0 ? 1.0 : (lam == 1.0 ? p : pow(p, lam));     \
                    w[i] = plam * -beta * pm1[i];                                              \
                    if (w[i] > wmax) wmax = w[i];                                              \
                } else {                                                                       \
                    /* (the powers and the GCE term only where they count: libm calls per row) */ \
                    double mp = a;                                                             \
                    if (b != 0.0) {                                                            \
                        const double pq = q == 1.0 ? p : pow(p, q);                            \
                        mp += b * pq * (r == 0.0 ? 1.0 : (r == 1.0 ? omp : pow(omp, r)));      \
                    }                                                                          \
                    mult[i] = mp;                                                              \
                    w[i] = 2.0 * omp * mp;                                                     \
                    wsum += w[i];                                                              \
                    value += alpha * -lp + delta * omp * omp;                                  \
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
                                               : sh / (-2.0 * pm1[i] + CCE_WEIGHT_EPS);        \
                const double row_scale = scale / rowsum[i];                                    \
                for (Py_ssize_t j = 0; j < c; ++j) gi[j] = (T)((double)gi[j] * row_scale);     \
                gi[yk[i]] = (T)(pm1[i] * scale);                                               \
                sk[i] = (T)sh;                                                                 \
                loss -= sh * logp[i];                                                          \
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

static PyMethodDef methods[] = {
    {"dm_grad", (PyCFunction)(void (*)(void))dm_grad, METH_FASTCALL,
     "dm_grad(z_ptr, y_ptr, n, c, lam, beta, grad_ptr, share_ptr, display_ptr, is_double): DM's "
     "logit gradient, shares and display loss of a CPU mini-batch (see _dmfused.c)."},
    {"pop_grad", (PyCFunction)(void (*)(void))pop_grad, METH_FASTCALL,
     "pop_grad(z_ptr, y_ptr, K, n, c, knobs_ptr, grad_ptr, share_ptr, display_ptr, tiny, is_double): "
     "every population member's logit gradient, shares and display loss (see _dmfused.c)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_dmfused",
                                    "Fused CPU kernels for DM's and a population's logit gradients.", -1, methods};

PyMODINIT_FUNC PyInit__dmfused(void) { return PyModule_Create(&module); }

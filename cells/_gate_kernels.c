/*
 * Fused gate arithmetic of the reference cells' steps (float64): the gates
 * (logistic or hard sigmoid), the GRU's and the LSTM's forward step after its
 * products, a large GRU layer's backward step before its product, and the lm
 * readout's per-row losses of a vectorised pass.
 *
 * Each kernel does, element by element and in the same order, the NumPy
 * operations that its Python twin in cells/gru.py, cells/lstm.py or
 * cells/stacked.py does with one ufunc call per operation, so the results are
 * the same to the last bit:
 *
 *   - add, subtract, multiply and divide are IEEE operations, each rounded on
 *     its own (built with -ffp-contract=off -fno-fast-math: no fused
 *     multiply-add, no reassociation);
 *   - exp, tanh and log are not reimplemented: they are NumPy's own float64 inner
 *     loops, taken from the np.exp, np.tanh and np.log ufuncs when the module loads.
 *
 * What is gained is the passes: NumPy's twin runs ten or so ufunc calls a step,
 * each a pass over the (P, B, width) arrays with its own call overhead; here
 * each probe's (B, width) block is done in one pass while it is in L1 cache.
 *
 * Arrays are (P, B, width) with P and B taken from the output; an input may
 * have fewer axes, or 1 on an axis, to broadcast (NumPy's rules for these
 * shapes).  Rows must be contiguous float64.  A call whose arrays do not fit
 * returns False before writing anything, and the caller runs the NumPy twin.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#define NPY_NO_DEPRECATED_API NPY_2_0_API_VERSION
#include <numpy/arrayobject.h>
#include <numpy/ufuncobject.h>

/* NumPy's float64 loops of exp, tanh and log, as its ufuncs call them */
static PyUFuncGenericFunction exp_loop, tanh_loop, log_loop;
static void *exp_data, *tanh_data, *log_data;

static int find_double_loop(PyObject *numpy, const char *name, PyUFuncGenericFunction *loop,
                            void **data)
{
    PyObject *ufunc = PyObject_GetAttrString(numpy, name);
    if (ufunc == NULL)
        return -1;
    if (!PyObject_TypeCheck(ufunc, &PyUFunc_Type)) {
        Py_DECREF(ufunc);
        PyErr_Format(PyExc_ImportError, "numpy.%s is not a ufunc", name);
        return -1;
    }
    PyUFuncObject *u = (PyUFuncObject *)ufunc;
    for (int i = 0; i < u->ntypes; i++) {
        if (u->nin == 1 && u->nout == 1 && u->types[2 * i] == NPY_DOUBLE
                && u->types[2 * i + 1] == NPY_DOUBLE && u->functions[i] != NULL) {
            *loop = u->functions[i];
            *data = u->data == NULL ? NULL : u->data[i];
            Py_DECREF(ufunc);       /* numpy keeps the ufunc (and its loops) alive */
            return 0;
        }
    }
    Py_DECREF(ufunc);
    PyErr_Format(PyExc_ImportError, "numpy.%s has no float64 loop", name);
    return -1;
}

/* out[i] = f(in[i]) for n contiguous doubles, through a ufunc's inner loop */
static inline void unary_loop(PyUFuncGenericFunction f, void *data, double *in, double *out,
                              npy_intp n)
{
    char *args[2] = {(char *)in, (char *)out};
    npy_intp dims[1] = {n};
    npy_intp steps[2] = {sizeof(double), sizeof(double)};
    f(args, dims, steps, data);
}

/* an array seen as (P, B, width): its data and byte strides (0 along a broadcast axis) */
typedef struct {
    char *data;
    npy_intp p_stride, b_stride;
} view;

/* fills v for obj as a (P, B, width) operand; 1 if it fits, 0 if not (not an array,
   or one of another dtype, shape or layout).  An output must have the shape itself,
   as (P, B, width) or, with P = 1, (B, width); an input may broadcast to it. */
static int as_view(PyObject *obj, npy_intp P, npy_intp B, npy_intp width, int output, view *v)
{
    if (!PyArray_Check(obj))
        return 0;
    PyArrayObject *a = (PyArrayObject *)obj;
    int nd = PyArray_NDIM(a);
    if (PyArray_TYPE(a) != NPY_DOUBLE || !PyArray_ISNOTSWAPPED(a) || !PyArray_ISALIGNED(a)
            || nd < 1 || nd > 3 || (output && (nd < 2 || !PyArray_ISWRITEABLE(a))))
        return 0;
    npy_intp *dims = PyArray_DIMS(a), *strides = PyArray_STRIDES(a);
    if (dims[nd - 1] != width || (width > 1 && strides[nd - 1] != sizeof(double)))
        return 0;
    npy_intp want[2] = {P, B}, got[2] = {1, 1}, step[2] = {0, 0};
    for (int k = 0; k < nd - 1; k++) {          /* the leading axes, right-aligned */
        got[2 - (nd - 1) + k] = dims[k];
        step[2 - (nd - 1) + k] = strides[k];
    }
    for (int k = 0; k < 2; k++) {
        if (got[k] == want[k])
            continue;
        if (got[k] != 1 || output)              /* an output is never broadcast */
            return 0;
        step[k] = 0;
    }
    v->data = PyArray_BYTES(a);
    v->p_stride = want[0] == 1 ? 0 : step[0];
    v->b_stride = want[1] == 1 ? 0 : step[1];
    return 1;
}

/* P, B and width of an output, (P, B, width) or (B, width) with P = 1; 0 if not one */
static int output_shape(PyObject *obj, npy_intp *P, npy_intp *B, npy_intp *width)
{
    if (!PyArray_Check(obj))
        return 0;
    int nd = PyArray_NDIM((PyArrayObject *)obj);
    if (nd != 2 && nd != 3)
        return 0;
    npy_intp *dims = PyArray_DIMS((PyArrayObject *)obj);
    *P = nd == 3 ? dims[0] : 1;
    *B = dims[nd - 2];
    *width = dims[nd - 1];
    return 1;
}

/* a step's mask: a (B,) float64 array, any stride; 0 if obj is not one */
static int mask_view(PyObject *obj, npy_intp B, const char **data, npy_intp *stride)
{
    PyArrayObject *m = (PyArrayObject *)obj;
    if (!PyArray_Check(obj) || PyArray_NDIM(m) != 1 || PyArray_DIM(m, 0) != B
            || PyArray_TYPE(m) != NPY_DOUBLE || !PyArray_ISNOTSWAPPED(m) || !PyArray_ISALIGNED(m))
        return 0;
    *data = PyArray_BYTES(m);
    *stride = PyArray_STRIDE(m, 0);
    return 1;
}

#define ROW(v, p, b) ((double *)((v).data + (p) * (v).p_stride + (b) * (v).b_stride))

/* whether an output's B rows of one probe lie end to end (one ufunc call for them) */
static int rows_packed(const view *v, npy_intp B, npy_intp width)
{
    return B == 1 || v->b_stride == width * (npy_intp)sizeof(double);
}

/* a masked step's row: o <- o m + (1 - m) s, the new state where the sequence is on,
   the old one s where it is off (NumPy twin: o *= m; o += (1 - m) * s) */
static void mask_blend(double *restrict o, const double *restrict s, double m, npy_intp n)
{
    double keep = 1.0 - m;
    for (npy_intp j = 0; j < n; j++) {
        double t = o[j] * m;
        o[j] = t + keep * s[j];
    }
}

/* one probe's block: a <- f(a + x), or f(-(a + x)) with negate; with a bias b,
   a <- f(a + (x + b)) or f(-(a + (x + b))); f a ufunc's loop, run once over the B rows
   where they lie end to end, else row by row */
static void apply_to_sum(const view *a, const view *x, const view *bias, npy_intp p,
                         npy_intp B, npy_intp W, int negate, PyUFuncGenericFunction f,
                         void *data)
{
    int packed = rows_packed(a, B, W);
    for (npy_intp b = 0; b < B; b++) {
        double *restrict ar = ROW(*a, p, b);
        const double *restrict xr = ROW(*x, p, b);
        if (bias != NULL) {     /* x = x W without its bias: x W + b first, as _project adds it */
            const double *restrict br = ROW(*bias, p, b);
            if (negate)
                for (npy_intp j = 0; j < W; j++)
                    ar[j] = -(ar[j] + (xr[j] + br[j]));
            else
                for (npy_intp j = 0; j < W; j++)
                    ar[j] = ar[j] + (xr[j] + br[j]);
        }
        else if (negate)
            for (npy_intp j = 0; j < W; j++)
                ar[j] = -(ar[j] + xr[j]);
        else
            for (npy_intp j = 0; j < W; j++)
                ar[j] = ar[j] + xr[j];
        if (!packed)
            unary_loop(f, data, ar, ar, W);
    }
    if (packed)
        unary_loop(f, data, ROW(*a, p, 0), ROW(*a, p, 0), B * W);
}

/* ------------------------------------------------------------------ sigmoid
 * a <- sigma(a + x) = 1 / (1 + exp(-(a + x)))
 * NumPy twin: add_into(a, x); then sigmoid_in_loop: negate, exp, add 1, reciprocal.
 * With a bias b (optional third argument), x is x W without it, and a + (x + b) is
 * taken for a + x: _project's add_into(x W, b), then the step's.
 */
static PyObject *sigmoid_of_sum(PyObject *self, PyObject *args)
{
    PyObject *a_obj, *x_obj, *b_obj = Py_None;
    if (!PyArg_ParseTuple(args, "OO|O:sigmoid_of_sum", &a_obj, &x_obj, &b_obj))
        return NULL;
    npy_intp P, B, W;
    if (!output_shape(a_obj, &P, &B, &W))
        Py_RETURN_FALSE;
    view a, x, bias;
    int biased = b_obj != Py_None;
    if (!as_view(a_obj, P, B, W, 1, &a) || !as_view(x_obj, P, B, W, 0, &x)
            || (biased && !as_view(b_obj, P, B, W, 0, &bias)))
        Py_RETURN_FALSE;
    Py_BEGIN_ALLOW_THREADS
    for (npy_intp p = 0; p < P; p++) {
        apply_to_sum(&a, &x, biased ? &bias : NULL, p, B, W, 1, exp_loop,
                     exp_data);                                 /* exp(-(a + x)) */
        for (npy_intp b = 0; b < B; b++) {
            double *restrict ar = ROW(a, p, b);
            for (npy_intp j = 0; j < W; j++)
                ar[j] = 1.0 / (ar[j] + 1.0);                    /* 1 / (1 + exp(-(a + x))) */
        }
    }
    Py_END_ALLOW_THREADS
    Py_RETURN_TRUE;
}

/* ------------------------------------------------------------- hard sigmoid
 * hard_sigmoid_of_sum(a, x, g):  a <- a + x;  g <- clip(0.2 a + 0.5, 0, 1)
 * (a is kept: the hard sigmoid's slope needs the pre-activation)
 * NumPy twin: add_into(a, x); then hard_sigmoid(a, out=g): multiply by 0.2, add 0.5,
 * clip (a NaN stays NaN, as np.clip keeps it).
 */
static PyObject *hard_sigmoid_of_sum(PyObject *self, PyObject *args)
{
    PyObject *a_obj, *x_obj, *g_obj;
    if (!PyArg_ParseTuple(args, "OOO:hard_sigmoid_of_sum", &a_obj, &x_obj, &g_obj))
        return NULL;
    npy_intp P, B, W;
    if (!output_shape(a_obj, &P, &B, &W))
        Py_RETURN_FALSE;
    view a, x, g;
    if (!as_view(a_obj, P, B, W, 1, &a) || !as_view(g_obj, P, B, W, 1, &g)
            || !as_view(x_obj, P, B, W, 0, &x))
        Py_RETURN_FALSE;
    Py_BEGIN_ALLOW_THREADS
    for (npy_intp p = 0; p < P; p++) {
        for (npy_intp b = 0; b < B; b++) {
            double *restrict ar = ROW(a, p, b), *restrict gr = ROW(g, p, b);
            const double *restrict xr = ROW(x, p, b);
            for (npy_intp j = 0; j < W; j++) {
                double s = ar[j] + xr[j];                       /* a = x W + b + h U */
                ar[j] = s;
                double t = s * 0.2;
                t = t + 0.5;                                    /* 0.2 a + 0.5 */
                gr[j] = t < 0.0 ? 0.0 : (t > 1.0 ? 1.0 : t);    /* clip to [0, 1] */
            }
        }
    }
    Py_END_ALLOW_THREADS
    Py_RETURN_TRUE;
}

/* ---------------------------------------------------------- GRU candidate
 * gru_candidate(rz, q, bn, xp_h, h, mask, n, h_out, update_old[, b_h])
 *
 *   reset "after" (q given, holding h U_h):   q <- q + bn;  n <- r q + xp_h
 *   reset "before" (q None, n holding (r h) U_h):         n <- n + xp_h
 *   (with b_h given, xp_h is x W_h without its bias, and xp_h + b_h is added)
 *   n <- tanh(n)
 *   update "old":  h' = (h - n) z + n        update "new":  h' = (n - h) z + h
 *   mask m (B,) given:  h_out = h' m + (1 - m) h;  else h_out = h'
 *
 * rz: the gates r | z (P, B, 2H), as sigmoid_of_sum wrote them.
 * NumPy twin: GRU._layer_step after its gates, operation for operation.
 */
static PyObject *gru_candidate(PyObject *self, PyObject *args)
{
    PyObject *rz_obj, *q_obj, *bn_obj, *xh_obj, *h_obj, *m_obj, *n_obj, *ho_obj;
    PyObject *bh_obj = Py_None;
    int update_old;
    if (!PyArg_ParseTuple(args, "OOOOOOOOp|O:gru_candidate", &rz_obj, &q_obj, &bn_obj, &xh_obj,
                          &h_obj, &m_obj, &n_obj, &ho_obj, &update_old, &bh_obj))
        return NULL;
    npy_intp P, B, H;
    if (!output_shape(ho_obj, &P, &B, &H))
        Py_RETURN_FALSE;
    int after = q_obj != Py_None, masked = m_obj != Py_None, biased = bh_obj != Py_None;
    view rz, q = {0}, bn = {0}, xh, h, n, ho, bh;
    if (!as_view(ho_obj, P, B, H, 1, &ho) || !as_view(n_obj, P, B, H, 1, &n)
            || !as_view(rz_obj, P, B, 2 * H, 0, &rz) || !as_view(xh_obj, P, B, H, 0, &xh)
            || !as_view(h_obj, P, B, H, 0, &h)
            || (after && (!as_view(q_obj, P, B, H, 1, &q) || !as_view(bn_obj, P, B, H, 0, &bn)))
            || (biased && !as_view(bh_obj, P, B, H, 0, &bh)))
        Py_RETURN_FALSE;
    const char *m_data = NULL;
    npy_intp m_stride = 0;
    if (masked && !mask_view(m_obj, B, &m_data, &m_stride))
        Py_RETURN_FALSE;
    Py_BEGIN_ALLOW_THREADS
    for (npy_intp p = 0; p < P; p++) {
        if (after) {
            for (npy_intp b = 0; b < B; b++) {
                const double *restrict r = ROW(rz, p, b), *restrict br = ROW(bn, p, b);
                double *restrict qr = ROW(q, p, b), *restrict nr = ROW(n, p, b);
                for (npy_intp j = 0; j < H; j++) {
                    double t = qr[j] + br[j];                   /* q = h U_h + bn */
                    qr[j] = t;
                    nr[j] = r[j] * t;                           /* r q */
                }
            }
        }
        /* n = tanh(r q + x W_h + b_h), or tanh((r h) U_h + x W_h + b_h) */
        apply_to_sum(&n, &xh, biased ? &bh : NULL, p, B, H, 0, tanh_loop, tanh_data);
        for (npy_intp b = 0; b < B; b++) {
            const double *restrict nr = ROW(n, p, b), *restrict z = ROW(rz, p, b) + H;
            const double *restrict hr = ROW(h, p, b);
            double *restrict o = ROW(ho, p, b);
            if (update_old) {
                for (npy_intp j = 0; j < H; j++) {
                    double t = hr[j] - nr[j];                   /* h' = (h - n) z + n */
                    t = t * z[j];
                    o[j] = t + nr[j];
                }
            } else {
                for (npy_intp j = 0; j < H; j++) {
                    double t = nr[j] - hr[j];                   /* h' = (n - h) z + h */
                    t = t * z[j];
                    o[j] = t + hr[j];
                }
            }
            if (masked)                                         /* h_t = h' m + (1 - m) h */
                mask_blend(o, hr, *(const double *)(m_data + b * m_stride), H);
        }
    }
    Py_END_ALLOW_THREADS
    Py_RETURN_TRUE;
}

/* ------------------------------------------------- GRU backward, reset "after"
 * gru_backward_after(dh, mask, rz, n, q, h, da, dq, dh_prev, update_old)
 *
 * One step's BPTT before its product with U, sigmoid gates (g' = g (1 - g)):
 *
 *   dh' = m dh (dh without a mask);  k = z, or 1 - z for update "new"
 *   dh_prev = dh' k  (+ (1 - m) dh with a mask);   dn = dh' (1 - k)
 *   dz = (h - n) dh' (negated for update "new");   da_h = (1 - n^2) dn
 *   da_r = (da_h q) r (1 - r);   da_z = dz z (1 - z)
 *   da = [da_r | da_z | da_h];   dq = [da_r | da_z | r da_h]
 *
 * then the caller adds dq U^T to dh_prev.  All (B, width) arrays, one step.
 * NumPy twin: GRU._layer_step_backward, operation for operation.
 */
/* one row of gru_backward_after; masked and old are constants at each call */
static inline __attribute__((always_inline)) void gru_backward_row(
    const double *restrict d, const double *restrict r, const double *restrict z,
    const double *restrict nr, const double *restrict qr, const double *restrict hr,
    double *restrict a, double *restrict aq, double *restrict prev, npy_intp H, double m,
    int masked, int old)
{
    double keep = 1.0 - m;
    for (npy_intp j = 0; j < H; j++) {
        double dnew = masked ? m * d[j] : d[j];                 /* dh' = m dh */
        double k = old ? z[j] : 1.0 - z[j];
        double one_minus_k = old ? 1.0 - z[j] : z[j];
        double slope_r = r[j] * (1.0 - r[j]), slope_z = z[j] * (1.0 - z[j]);
        double tg = 1.0 - nr[j] * nr[j];                        /* 1 - n^2 */
        double h_minus_n = hr[j] - nr[j];
        double back = dnew * k;                                 /* dh_prev = dh' k */
        double dn = dnew * one_minus_k;                         /* dn = dh' (1 - k) */
        if (masked)
            back = back + keep * d[j];                          /* + (1 - m) dh */
        double dk = h_minus_n * dnew;                           /* dh' (h - n) */
        double dz = old ? dk : -dk;
        double da_h = tg * dn;
        double da_r = (da_h * qr[j]) * slope_r;                 /* dr = da_h q */
        double da_z = dz * slope_z;
        a[j] = da_r;
        a[H + j] = da_z;
        a[2 * H + j] = da_h;
        aq[j] = da_r;
        aq[H + j] = da_z;
        aq[2 * H + j] = da_h * r[j];                            /* dq_h = r da_h */
        prev[j] = back;
    }
}

static PyObject *gru_backward_after(PyObject *self, PyObject *args)
{
    PyObject *dh_obj, *m_obj, *rz_obj, *n_obj, *q_obj, *h_obj, *da_obj, *dq_obj, *dp_obj;
    int update_old;
    if (!PyArg_ParseTuple(args, "OOOOOOOOOp:gru_backward_after", &dh_obj, &m_obj, &rz_obj,
                          &n_obj, &q_obj, &h_obj, &da_obj, &dq_obj, &dp_obj, &update_old))
        return NULL;
    npy_intp P, B, H;
    if (!output_shape(dp_obj, &P, &B, &H) || P != 1)
        Py_RETURN_FALSE;
    view dh, rz, n, q, h, da, dq, dp;
    if (!as_view(dp_obj, 1, B, H, 1, &dp) || !as_view(da_obj, 1, B, 3 * H, 1, &da)
            || !as_view(dq_obj, 1, B, 3 * H, 1, &dq) || !as_view(dh_obj, 1, B, H, 0, &dh)
            || !as_view(rz_obj, 1, B, 2 * H, 0, &rz) || !as_view(n_obj, 1, B, H, 0, &n)
            || !as_view(q_obj, 1, B, H, 0, &q) || !as_view(h_obj, 1, B, H, 0, &h))
        Py_RETURN_FALSE;
    const char *m_data = NULL;
    npy_intp m_stride = 0;
    if (m_obj != Py_None && !mask_view(m_obj, B, &m_data, &m_stride))
        Py_RETURN_FALSE;
    Py_BEGIN_ALLOW_THREADS
    for (npy_intp b = 0; b < B; b++) {
        double m = m_data == NULL ? 1.0 : *(const double *)(m_data + b * m_stride);
#define GRU_BACKWARD_ROW(masked, old)                                                   \
        gru_backward_row(ROW(dh, 0, b), ROW(rz, 0, b), ROW(rz, 0, b) + H, ROW(n, 0, b),    \
                         ROW(q, 0, b), ROW(h, 0, b), ROW(da, 0, b), ROW(dq, 0, b),          \
                         ROW(dp, 0, b), H, m, masked, old)
        /* one branch-free loop per case, so that each vectorises */
        if (m_data == NULL)
            update_old ? GRU_BACKWARD_ROW(0, 1) : GRU_BACKWARD_ROW(0, 0);
        else
            update_old ? GRU_BACKWARD_ROW(1, 1) : GRU_BACKWARD_ROW(1, 0);
#undef GRU_BACKWARD_ROW
    }
    Py_END_ALLOW_THREADS
    Py_RETURN_TRUE;
}

/* --------------------------------------------------------- LSTM candidate
 * lstm_candidate(ifo, u, xp_c, s, mask, tc, s_out)
 *
 *   u <- tanh(u + xp_c)                       (u holding h U_c on entry)
 *   c' = f c + i u;  tc <- tanh(c');  h' = o tc;  s_out = [h' | c']
 *   mask m (B,) given:  s_out = s' m + (1 - m) s;  else s_out = s'
 *
 * ifo: the gates i | f | o (P, B, 3H), as sigmoid_of_sum wrote them; s = [h | c]
 * (P, B, 2H), the state entering the step.
 * NumPy twin: LSTM._layer_step after its gates, operation for operation.
 */
static PyObject *lstm_candidate(PyObject *self, PyObject *args)
{
    PyObject *ifo_obj, *u_obj, *xc_obj, *s_obj, *m_obj, *tc_obj, *so_obj;
    if (!PyArg_ParseTuple(args, "OOOOOOO:lstm_candidate", &ifo_obj, &u_obj, &xc_obj, &s_obj,
                          &m_obj, &tc_obj, &so_obj))
        return NULL;
    npy_intp P, B, H;
    if (!output_shape(tc_obj, &P, &B, &H))
        Py_RETURN_FALSE;
    view ifo, u, xc, s, tc, so;
    if (!as_view(tc_obj, P, B, H, 1, &tc) || !as_view(u_obj, P, B, H, 1, &u)
            || !as_view(so_obj, P, B, 2 * H, 1, &so) || !as_view(ifo_obj, P, B, 3 * H, 0, &ifo)
            || !as_view(xc_obj, P, B, H, 0, &xc) || !as_view(s_obj, P, B, 2 * H, 0, &s))
        Py_RETURN_FALSE;
    const char *m_data = NULL;
    npy_intp m_stride = 0;
    if (m_obj != Py_None && !mask_view(m_obj, B, &m_data, &m_stride))
        Py_RETURN_FALSE;
    int tc_packed = rows_packed(&tc, B, H);
    Py_BEGIN_ALLOW_THREADS
    for (npy_intp p = 0; p < P; p++) {
        /* u = tanh(a_c), a_c = h U_c + x W_c + b_c */
        apply_to_sum(&u, &xc, NULL, p, B, H, 0, tanh_loop, tanh_data);
        for (npy_intp b = 0; b < B; b++) {
            const double *restrict i = ROW(ifo, p, b), *restrict f = i + H;
            const double *restrict ur = ROW(u, p, b), *restrict c = ROW(s, p, b) + H;
            double *restrict cn = ROW(so, p, b) + H, *restrict t = ROW(tc, p, b);
            for (npy_intp j = 0; j < H; j++) {
                double fc = f[j] * c[j];                        /* c' = f c + i u */
                double iu = i[j] * ur[j];
                fc = fc + iu;
                cn[j] = fc;
                t[j] = fc;
            }
            if (!tc_packed)
                unary_loop(tanh_loop, tanh_data, t, t, H);
        }
        if (tc_packed)
            unary_loop(tanh_loop, tanh_data, ROW(tc, p, 0), ROW(tc, p, 0), B * H);
        for (npy_intp b = 0; b < B; b++) {
            const double *restrict o = ROW(ifo, p, b) + 2 * H, *restrict t = ROW(tc, p, b);
            double *restrict hn = ROW(so, p, b);
            for (npy_intp j = 0; j < H; j++)
                hn[j] = o[j] * t[j];                            /* h' = o tanh(c') */
            if (m_data != NULL)                                 /* s_t = s' m + (1 - m) s */
                mask_blend(hn, ROW(s, p, b), *(const double *)(m_data + b * m_stride), 2 * H);
        }
    }
    Py_END_ALLOW_THREADS
    Py_RETURN_TRUE;
}

/* ------------------------------------------------------------------ the lm readout
 * A vectorised pass's per-row losses, from the logits l = h V (P, R, K), R = T B rows:
 *   a_rk = l_rk + c_k;  shift_r = max_k a_rk;
 *   log_total_r = log sum_k exp(a_rk - shift_r), the classes added in order;
 *   nll_r = log_total_r - (a_r,y_r - shift_r).
 * NumPy twin (cells/stacked.py, StackedCell._readout for probes): logits[..., k] += c[k]
 * class by class; activations.log_normaliser for K <= SHORT_AXIS classes (the max
 * class by class, exp of each class's difference added in order, log); then
 * nll = log_total - (picked - shift).  np.maximum returns NaN when either is NaN.
 */
#define READOUT_ROWS 256
#define READOUT_CLASSES 8

static inline double numpy_maximum(double a, double b)
{
    return (a >= b || a != a) ? a : b;
}

static PyObject *lm_nll(PyObject *self, PyObject *args)
{
    PyObject *l_obj, *c_obj, *y_obj, *out_obj;
    if (!PyArg_ParseTuple(args, "OOOO:lm_nll", &l_obj, &c_obj, &y_obj, &out_obj))
        return NULL;
    if (!PyArray_Check(l_obj) || !PyArray_Check(y_obj) || !PyArray_Check(out_obj)
            || (c_obj != Py_None && !PyArray_Check(c_obj)))
        Py_RETURN_FALSE;
    PyArrayObject *l = (PyArrayObject *)l_obj, *y = (PyArrayObject *)y_obj,
                  *out = (PyArrayObject *)out_obj;
    if (PyArray_TYPE(l) != NPY_DOUBLE || PyArray_NDIM(l) != 3 || !PyArray_IS_C_CONTIGUOUS(l)
            || !PyArray_ISNOTSWAPPED(l) || !PyArray_ISALIGNED(l))
        Py_RETURN_FALSE;
    npy_intp P = PyArray_DIM(l, 0), R = PyArray_DIM(l, 1), K = PyArray_DIM(l, 2);
    if (K < 1 || K > READOUT_CLASSES)
        Py_RETURN_FALSE;
    if (PyArray_TYPE(out) != NPY_DOUBLE || PyArray_NDIM(out) != 2 || PyArray_DIM(out, 0) != P
            || PyArray_DIM(out, 1) != R || !PyArray_IS_C_CONTIGUOUS(out)
            || !PyArray_ISWRITEABLE(out) || !PyArray_ISNOTSWAPPED(out) || !PyArray_ISALIGNED(out))
        Py_RETURN_FALSE;
    if (PyArray_TYPE(y) != NPY_INTP || PyArray_NDIM(y) != 1 || PyArray_DIM(y, 0) != R
            || !PyArray_ISNOTSWAPPED(y) || !PyArray_ISALIGNED(y))
        Py_RETURN_FALSE;
    const char *y_data = PyArray_BYTES(y);
    npy_intp y_stride = PyArray_STRIDE(y, 0);
    for (npy_intp r = 0; r < R; r++) {          /* a class out of range: NumPy raises */
        npy_intp k = *(const npy_intp *)(y_data + r * y_stride);
        if (k < 0 || k >= K)
            Py_RETURN_FALSE;
    }
    double c[READOUT_CLASSES] = {0};
    int add_c = c_obj != Py_None;
    if (add_c) {
        PyArrayObject *ca = (PyArrayObject *)c_obj;
        if (PyArray_TYPE(ca) != NPY_DOUBLE || PyArray_NDIM(ca) != 1 || PyArray_DIM(ca, 0) != K
                || !PyArray_ISNOTSWAPPED(ca) || !PyArray_ISALIGNED(ca))
            Py_RETURN_FALSE;
        for (npy_intp k = 0; k < K; k++)
            c[k] = *(const double *)(PyArray_BYTES(ca) + k * PyArray_STRIDE(ca, 0));
    }
    const double *ld = (const double *)PyArray_DATA(l);
    double *od = (double *)PyArray_DATA(out);
    Py_BEGIN_ALLOW_THREADS
    double a[READOUT_ROWS * READOUT_CLASSES], shift[READOUT_ROWS], total[READOUT_ROWS],
           e[READOUT_ROWS];
    for (npy_intp p = 0; p < P; p++) {
        for (npy_intp r0 = 0; r0 < R; r0 += READOUT_ROWS) {
            npy_intp n = R - r0 < READOUT_ROWS ? R - r0 : READOUT_ROWS;
            const double *lp = ld + (p * R + r0) * K;
            for (npy_intp i = 0; i < n; i++) {
                for (npy_intp k = 0; k < K; k++)     /* a = l + c */
                    a[i * K + k] = add_c ? lp[i * K + k] + c[k] : lp[i * K + k];
                double s = a[i * K];                  /* the max, class by class */
                for (npy_intp k = 1; k < K; k++)
                    s = numpy_maximum(s, a[i * K + k]);
                shift[i] = s;
                total[i] = a[i * K] - s;
            }
            unary_loop(exp_loop, exp_data, total, total, n);   /* exp(a_0 - shift) */
            for (npy_intp k = 1; k < K; k++) {
                for (npy_intp i = 0; i < n; i++)
                    e[i] = a[i * K + k] - shift[i];
                unary_loop(exp_loop, exp_data, e, e, n);
                for (npy_intp i = 0; i < n; i++)
                    total[i] = total[i] + e[i];           /* + exp(a_k - shift), in order */
            }
            unary_loop(log_loop, log_data, total, total, n);   /* log_total */
            double *o = od + p * R + r0;
            for (npy_intp i = 0; i < n; i++) {
                npy_intp k = *(const npy_intp *)(y_data + (r0 + i) * y_stride);
                o[i] = total[i] - (a[i * K + k] - shift[i]);    /* -log p(y) */
            }
        }
    }
    Py_END_ALLOW_THREADS
    Py_RETURN_TRUE;
}

static PyMethodDef methods[] = {
    {"sigmoid_of_sum", sigmoid_of_sum, METH_VARARGS,
     "sigmoid_of_sum(a, x[, b]) -> bool: a <- sigma(a + x), or sigma(a + (x + b)), in place; "
     "False (nothing written) when the arrays do not fit the kernel."},
    {"hard_sigmoid_of_sum", hard_sigmoid_of_sum, METH_VARARGS,
     "hard_sigmoid_of_sum(a, x, g) -> bool: a <- a + x, g <- clip(0.2 a + 0.5, 0, 1); False "
     "(nothing written) when the arrays do not fit the kernel."},
    {"gru_candidate", gru_candidate, METH_VARARGS,
     "gru_candidate(rz, q, bn, xp_h, h, mask, n, h_out, update_old[, b_h]) -> bool: the "
     "GRU step after its gates, xp_h + b_h taken for xp_h where b_h is given (see "
     "cells/_gate_kernels.c); False (nothing written) when the arrays do not fit the "
     "kernel."},
    {"gru_backward_after", gru_backward_after, METH_VARARGS,
     "gru_backward_after(dh, mask, rz, n, q, h, da, dq, dh_prev, update_old) -> bool: a GRU "
     "step's BPTT (reset after, sigmoid gates) before its product with U (see "
     "cells/_gate_kernels.c); False (nothing written) when the arrays do not fit."},
    {"lstm_candidate", lstm_candidate, METH_VARARGS,
     "lstm_candidate(ifo, u, xp_c, s, mask, tc, s_out) -> bool: the LSTM step after its "
     "gates (see cells/_gate_kernels.c); False (nothing written) when the arrays do not "
     "fit the kernel."},
    {"lm_nll", lm_nll, METH_VARARGS,
     "lm_nll(logits, c, y, nll) -> bool: each probe's per-row -log p(y) of the lm readout "
     "from logits (P, R, K) without c, c (K,) or None, y (R,) class ids, into nll (P, R) "
     "(see cells/_gate_kernels.c); False (nothing written) when the arrays do not fit."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_gate_kernels",
    "Fused gate arithmetic of the reference cells' forward step, bit-identical to NumPy's.",
    -1, methods,
};

PyMODINIT_FUNC PyInit__gate_kernels(void)
{
    import_array();
    import_umath();
    PyObject *numpy = PyImport_ImportModule("numpy");
    if (numpy == NULL)
        return NULL;
    int bad = find_double_loop(numpy, "exp", &exp_loop, &exp_data)
              || find_double_loop(numpy, "tanh", &tanh_loop, &tanh_data)
              || find_double_loop(numpy, "log", &log_loop, &log_data);
    Py_DECREF(numpy);
    if (bad)
        return NULL;
    return PyModule_Create(&module);
}

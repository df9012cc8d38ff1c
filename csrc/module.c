/* module.c -- the CPython binding of the iis core (the only file that includes Python.h).
 *
 * Every function takes keyword arguments (the Python layer passes all but the leading
 * arrays by keyword) and keeps no state between calls: the kernel choice arrives as
 * kernels="auto" | "blas". Arguments are checked here (dtype, ndim, layout, shapes) although the Python
 * layer already validates them, so that no call can crash the interpreter.
 * Output arrays are allocated with the GIL held, then the GIL is released
 * around each kernel; Ctrl-C is honoured through the interrupt hook, which the
 * kernels call between tiles/iterations on the calling thread.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <limits.h>
#define NPY_NO_DEPRECATED_API NPY_1_7_API_VERSION
#include <numpy/arrayobject.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#include "internal.h" /* iis.h, plus the introspection and test hooks */

#define IIS_BEGIN_ALLOW_THREADS Py_BEGIN_ALLOW_THREADS
#define IIS_END_ALLOW_THREADS Py_END_ALLOW_THREADS

/* set once at import from scipy.linalg.cython_blas; read-only afterwards */
static iis_blas g_blas = {NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL};

typedef struct {
    PyObject *progress; /* NULL, or the call's callable: (done, total) for ctx->progress, or
                           the iis_event fields for the solver's trace (trace_hook) */
    int failed;         /* the progress callable raised */
} hook_state;

/* Takes the GIL, runs pending signal handlers; nonzero means stop. */
static int interrupt_hook(void *p)
{
    hook_state *st = (hook_state *)p;
    int stop;
    PyGILState_STATE g = PyGILState_Ensure();
    stop = (st && st->failed) || PyErr_Occurred() != NULL || PyErr_CheckSignals() != 0;
    PyGILState_Release(g);
    return stop;
}

static void progress_hook(void *p, int done, int total)
{
    hook_state *st = (hook_state *)p;
    PyGILState_STATE g;
    PyObject *r;
    if (!st || !st->progress || st->failed) return;
    g = PyGILState_Ensure();
    r = PyObject_CallFunction(st->progress, "ii", done, total);
    if (!r) st->failed = 1;
    Py_XDECREF(r);
    PyGILState_Release(g);
}

/* The solver's trace callback (iis_event, as a tuple to the Python callable), then the
 * pending signal handlers; nonzero (stop) when either raised. */
static int trace_hook(void *p, const iis_event *ev)
{
    hook_state *st = (hook_state *)p;
    PyGILState_STATE g = PyGILState_Ensure();
    PyObject *r = PyObject_CallFunction(st->progress, "iiiddiid", ev->kind, ev->stage, ev->iter, ev->loss,
                                        ev->grad_max, ev->kept, ev->stop, ev->accuracy);
    int stop;
    if (!r) st->failed = 1;
    Py_XDECREF(r);
    stop = st->failed || PyErr_CheckSignals() != 0;
    PyGILState_Release(g);
    return stop;
}

/* prm's trace: the hook when o is a callable, none when it is None; -1 (TypeError) otherwise */
static int set_trace(iis_solver_params *prm, hook_state *st, PyObject *o)
{
    if (o == Py_None) return 0;
    if (!PyCallable_Check(o)) {
        PyErr_SetString(PyExc_TypeError, "progress must be callable or None");
        return -1;
    }
    st->progress = o;
    prm->trace = trace_hook;
    prm->trace_ctx = st;
    return 0;
}

static int max_threads(void)
{
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

/* scikit-learn semantics: None/0 -> all cores, negative counts back (-1 = all).
 * Counts above 4x the processors are clamped there: asking OpenMP for 100000
 * threads crashed the interpreter (thread creation fails inside libgomp), and
 * the results do not depend on the thread count anyway. */
static int resolve_threads(int n)
{
    int mx = max_threads(), cap = 4 * (mx > 1 ? mx : 1);
#ifdef _OPENMP
    if (4 * omp_get_num_procs() > cap) cap = 4 * omp_get_num_procs();
#endif
    if (n > 0) return n < cap ? n : cap;
    if (n == 0) return mx;
    n = mx + 1 + n;
    return n < 1 ? 1 : n;
}

/* "auto" -> IIS_KERNELS_AUTO, "blas" -> IIS_KERNELS_BLAS; -1 with a ValueError otherwise.
 * Every entry point with a context takes kernels= (the Python layer passes the
 * IIS_KERNELS environment variable, read at each call): no global setting. */
static int parse_kernels(const char *name)
{
    if (!strcmp(name, "auto")) return IIS_KERNELS_AUTO;
    if (!strcmp(name, "blas")) return IIS_KERNELS_BLAS;
    PyErr_Format(PyExc_ValueError, "kernels must be 'auto' or 'blas', got '%s'", name);
    return -1;
}

/* a required argument given neither by position nor by keyword */
static int missing(const char *fn, const char *name)
{
    PyErr_Format(PyExc_TypeError, "%s() missing required argument '%s'", fn, name);
    return -1;
}

/* *out = float(o) for a required float argument o (NULL: not given) */
static int req_double(PyObject *o, const char *fn, const char *name, double *out)
{
    if (!o) return missing(fn, name);
    *out = PyFloat_AsDouble(o);
    return (*out == -1.0 && PyErr_Occurred()) ? -1 : 0;
}

/* kernels: a value of parse_kernels */
static void init_ctx(iis_ctx *ctx, hook_state *st, int n_threads, int kernels)
{
    memset(ctx, 0, sizeof(*ctx));
    ctx->blas = &g_blas;
    ctx->kernels = kernels;
    ctx->n_threads = resolve_threads(n_threads);
    ctx->interrupt = interrupt_hook;
    ctx->interrupt_ctx = st;
    ctx->progress = progress_hook;
    ctx->progress_ctx = st;
}

/* Turn a status into a Python exception (NULL return convenience). */
static PyObject *raise_status(int status, const char *where)
{
    if (PyErr_Occurred()) return NULL; /* KeyboardInterrupt or a progress error */
    switch (status) {
    case IIS_ENOMEM: return PyErr_NoMemory();
    case IIS_EINTR: PyErr_SetNone(PyExc_KeyboardInterrupt); return NULL;
    case IIS_EINVAL: PyErr_Format(PyExc_ValueError, "%s: invalid argument", where); return NULL;
    case IIS_ENOBLAS:
        PyErr_Format(PyExc_RuntimeError, "%s: the BLAS table is not set (call _set_blas)", where);
        return NULL;
    default: PyErr_Format(PyExc_RuntimeError, "%s: error %d", where, status); return NULL;
    }
}

/* Borrowed check: a NumPy array of the given type and ndim whose rows are
 * contiguous (unit stride in the last dimension) and aligned. When rows_only
 * is 0 the whole array must be C-contiguous. */
static PyArrayObject *arr(PyObject *o, const char *name, int typenum, int ndim, int rows_only)
{
    PyArrayObject *a;
    if (!PyArray_Check(o)) {
        PyErr_Format(PyExc_TypeError, "%s must be a numpy array, got %s", name, Py_TYPE(o)->tp_name);
        return NULL;
    }
    a = (PyArrayObject *)o;
    if (PyArray_TYPE(a) != typenum) {
        PyErr_Format(PyExc_TypeError, "%s has dtype %s, expected %s", name,
                     PyArray_DESCR(a)->typeobj->tp_name,
                     typenum == NPY_FLOAT32 ? "float32"
                     : typenum == NPY_FLOAT64 ? "float64"
                     : typenum == NPY_INT32 ? "int32" : "another dtype");
        return NULL;
    }
    if (PyArray_NDIM(a) != ndim) {
        PyErr_Format(PyExc_ValueError, "%s must be %d-D, got %d-D", name, ndim, PyArray_NDIM(a));
        return NULL;
    }
    if (!PyArray_ISALIGNED(a) || !PyArray_ISNOTSWAPPED(a)) {
        PyErr_Format(PyExc_ValueError, "%s must be aligned and in native byte order", name);
        return NULL;
    }
    if (PyArray_SIZE(a) == 0) return a; /* no element is ever read */
    if (rows_only && ndim == 2) {
        npy_intp isz = PyArray_ITEMSIZE(a);
        npy_intp s0 = PyArray_STRIDE(a, 0), s1 = PyArray_STRIDE(a, 1);
        if ((PyArray_DIM(a, 1) > 1 && s1 != isz) || s0 < 0 || s0 % isz != 0 ||
            (PyArray_DIM(a, 0) > 1 && s0 / isz < PyArray_DIM(a, 1))) {
            PyErr_Format(PyExc_ValueError, "%s must have contiguous rows", name);
            return NULL;
        }
    } else if (!PyArray_IS_C_CONTIGUOUS(a)) {
        PyErr_Format(PyExc_ValueError, "%s must be C-contiguous", name);
        return NULL;
    }
    return a;
}

static int64_t row_ld(PyArrayObject *a)
{
    npy_intp isz = PyArray_ITEMSIZE(a);
    if (PyArray_DIM(a, 0) <= 1) return PyArray_DIM(a, 1);
    return (int64_t)(PyArray_STRIDE(a, 0) / isz);
}

static int float_type(PyObject *o, const char *name)
{
    if (!PyArray_Check(o)) {
        PyErr_Format(PyExc_TypeError, "%s must be a numpy array, got %s", name, Py_TYPE(o)->tp_name);
        return -1;
    }
    int t = PyArray_TYPE((PyArrayObject *)o);
    if (t != NPY_FLOAT32 && t != NPY_FLOAT64) {
        PyErr_Format(PyExc_TypeError, "%s must be float32 or float64", name);
        return -1;
    }
    return t;
}

/* ---- _set_blas(sgemm, dgemm[, ssyrk, dsyrk, dtrsm, dpotrf]) capsules ----------- */
static void *capsule_ptr(PyObject *cap)
{
    const char *nm;
    if (!PyCapsule_CheckExact(cap)) {
        PyErr_SetString(PyExc_TypeError, "expected a PyCapsule holding a BLAS function");
        return NULL;
    }
    nm = PyCapsule_GetName(cap);
    return PyCapsule_GetPointer(cap, nm);
}

static PyObject *py_set_blas(PyObject *self, PyObject *args)
{
    PyObject *cap[6] = {NULL, NULL, NULL, NULL, NULL, NULL};
    void *ptr[6] = {NULL, NULL, NULL, NULL, NULL, NULL};
    (void)self;
    if (!PyArg_ParseTuple(args, "OO|OOOO", &cap[0], &cap[1], &cap[2], &cap[3], &cap[4], &cap[5]))
        return NULL;
    for (int i = 0; i < 6; i++)
        if (cap[i] && cap[i] != Py_None && !(ptr[i] = capsule_ptr(cap[i]))) return NULL;
    if (!ptr[0] || !ptr[1]) {
        PyErr_SetString(PyExc_TypeError, "_set_blas needs the sgemm and dgemm capsules");
        return NULL;
    }
    g_blas.sgemm = (iis_sgemm_fn)ptr[0];
    g_blas.dgemm = (iis_dgemm_fn)ptr[1];
    g_blas.ssyrk = (iis_ssyrk_fn)ptr[2];
    g_blas.dsyrk = (iis_dsyrk_fn)ptr[3];
    g_blas.dtrsm = (iis_dtrsm_fn)ptr[4];
    g_blas.dpotrf = (iis_dpotrf_fn)ptr[5];
    Py_RETURN_NONE;
}

/* ---- project(F, unit_p, norm, mean, std, n_threads[, check]) -> A | (A, max|F|) */
static PyObject *py_project(PyObject *self, PyObject *args, PyObject *kw)
{
    PyObject *of, *op, *om = Py_None, *os = Py_None;
    int norm = IIS_NORM_NONE, nt = 1, t, st = 0;
    const char *kern = "auto";
    int kk;

    PyArrayObject *f, *p, *mean = NULL, *std = NULL, *out;
    hook_state hs = {NULL, 0};
    iis_ctx ctx;
    (void)self;
    int check = 0;
    double absmax = 0.0;
    static char *kwl[] = {"features", "concepts", "norm", "mean", "std", "n_threads", "check", "kernels", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OO|iOOips", kwl, &of, &op, &norm, &om, &os, &nt, &check, &kern))
        return NULL;
    if ((kk = parse_kernels(kern)) < 0) return NULL;

    if ((t = float_type(of, "features")) < 0) return NULL;
    if (!(f = arr(of, "features", t, 2, 1)) || !(p = arr(op, "concepts", t, 2, 0))) return NULL;
    if (PyArray_DIM(f, 1) != PyArray_DIM(p, 1)) {
        PyErr_Format(PyExc_ValueError, "features have d=%zd but concepts have d=%zd",
                     (Py_ssize_t)PyArray_DIM(f, 1), (Py_ssize_t)PyArray_DIM(p, 1));
        return NULL;
    }
    if (norm == IIS_NORM_STANDARDIZE) {
        if (!(mean = arr(om, "mean", t, 1, 0)) || !(std = arr(os, "std", t, 1, 0))) return NULL;
        if (PyArray_DIM(mean, 0) != PyArray_DIM(p, 0) || PyArray_DIM(std, 0) != PyArray_DIM(p, 0)) {
            PyErr_SetString(PyExc_ValueError, "mean/std must have one entry per concept");
            return NULL;
        }
    } else if (norm != IIS_NORM_NONE && norm != IIS_NORM_LAYERNORM) {
        PyErr_Format(PyExc_ValueError, "unknown normalisation code %d", norm);
        return NULL;
    }
    {
        npy_intp dims[2] = {PyArray_DIM(f, 0), PyArray_DIM(p, 0)};
        out = (PyArrayObject *)PyArray_EMPTY(2, dims, t, 0);
    }
    if (!out) return NULL;
    init_ctx(&ctx, &hs, nt, kk);
    IIS_BEGIN_ALLOW_THREADS
    if (t == NPY_FLOAT32)
        st = iis_project_f(&ctx, PyArray_DATA(f), PyArray_DIM(f, 0), (int)PyArray_DIM(f, 1),
                           row_ld(f), PyArray_DATA(p), (int)PyArray_DIM(p, 0), norm,
                           mean ? PyArray_DATA(mean) : NULL, std ? PyArray_DATA(std) : NULL,
                           PyArray_DATA(out), check ? &absmax : NULL);
    else
        st = iis_project_d(&ctx, PyArray_DATA(f), PyArray_DIM(f, 0), (int)PyArray_DIM(f, 1),
                           row_ld(f), PyArray_DATA(p), (int)PyArray_DIM(p, 0), norm,
                           mean ? PyArray_DATA(mean) : NULL, std ? PyArray_DATA(std) : NULL,
                           PyArray_DATA(out), check ? &absmax : NULL);
    IIS_END_ALLOW_THREADS
    if (st != IIS_OK) {
        Py_DECREF(out);
        return raise_status(st, "project");
    }
    if (check) return Py_BuildValue("Nd", (PyObject *)out, absmax);
    return (PyObject *)out;
}

/* ---- colstats(A, n_threads) -> (mean, std) -------------------------------- */
static PyObject *py_colstats(PyObject *self, PyObject *args, PyObject *kw)
{
    PyObject *oa;
    int nt = 1, t, st = 0;
    PyArrayObject *a, *mean, *std;
    const char *kern = "auto";
    int kk;

    hook_state hs = {NULL, 0};
    iis_ctx ctx;
    (void)self;
    static char *kwl[] = {"activations", "n_threads", "kernels", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O|is", kwl, &oa, &nt, &kern)) return NULL;
    if ((kk = parse_kernels(kern)) < 0) return NULL;

    if ((t = float_type(oa, "activations")) < 0 || !(a = arr(oa, "activations", t, 2, 1))) return NULL;
    if (PyArray_DIM(a, 0) < 1) {
        PyErr_SetString(PyExc_ValueError, "activations must have at least one row");
        return NULL;
    }
    {
        npy_intp dims[1] = {PyArray_DIM(a, 1)};
        mean = (PyArrayObject *)PyArray_EMPTY(1, dims, t, 0);
        std = (PyArrayObject *)PyArray_EMPTY(1, dims, t, 0);
    }
    if (!mean || !std) {
        Py_XDECREF(mean);
        Py_XDECREF(std);
        return NULL;
    }
    init_ctx(&ctx, &hs, nt, kk);
    IIS_BEGIN_ALLOW_THREADS
    if (t == NPY_FLOAT32)
        st = iis_colstats_f(&ctx, PyArray_DATA(a), PyArray_DIM(a, 0), (int)PyArray_DIM(a, 1),
                            row_ld(a), PyArray_DATA(mean), PyArray_DATA(std));
    else
        st = iis_colstats_d(&ctx, PyArray_DATA(a), PyArray_DIM(a, 0), (int)PyArray_DIM(a, 1),
                            row_ld(a), PyArray_DATA(mean), PyArray_DATA(std));
    IIS_END_ALLOW_THREADS
    if (st != IIS_OK) {
        Py_DECREF(mean);
        Py_DECREF(std);
        return raise_status(st, "colstats");
    }
    return Py_BuildValue("NN", mean, std);
}

/* ---- topk(A, k, soft, dense, n_threads) -> (idx, val) or masked A --------- */
static PyObject *py_topk(PyObject *self, PyObject *args, PyObject *kw)
{
    PyObject *oa;
    int k, soft = 0, dense = 0, nt = 1, t, st = 0;
    const char *kern = "auto";
    int kk;

    PyArrayObject *a, *idx = NULL, *val = NULL;
    hook_state hs = {NULL, 0};
    iis_ctx ctx;
    (void)self;
    static char *kwl[] = {"activations", "k", "soft", "dense", "n_threads", "kernels", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kw, "Oi|ppis", kwl, &oa, &k, &soft, &dense, &nt, &kern))
        return NULL;
    if ((kk = parse_kernels(kern)) < 0) return NULL;

    if ((t = float_type(oa, "activations")) < 0 || !(a = arr(oa, "activations", t, 2, 1))) return NULL;
    if (k < 0 || k > PyArray_DIM(a, 1)) {
        PyErr_Format(PyExc_ValueError, "k=%d must be in [0, %zd]", k, (Py_ssize_t)PyArray_DIM(a, 1));
        return NULL;
    }
    if (dense) {
        npy_intp dims[2] = {PyArray_DIM(a, 0), PyArray_DIM(a, 1)};
        val = (PyArrayObject *)PyArray_EMPTY(2, dims, t, 0);
        if (!val) return NULL;
    } else {
        npy_intp dims[2] = {PyArray_DIM(a, 0), k};
        idx = (PyArrayObject *)PyArray_EMPTY(2, dims, NPY_INT32, 0);
        val = (PyArrayObject *)PyArray_EMPTY(2, dims, t, 0);
        if (!idx || !val) {
            Py_XDECREF(idx);
            Py_XDECREF(val);
            return NULL;
        }
    }
    init_ctx(&ctx, &hs, nt, kk);
    IIS_BEGIN_ALLOW_THREADS
    if (dense)
        st = t == NPY_FLOAT32
                 ? iis_mask_dense_f(&ctx, PyArray_DATA(a), PyArray_DIM(a, 0), (int)PyArray_DIM(a, 1),
                                    row_ld(a), k, soft, PyArray_DATA(val))
                 : iis_mask_dense_d(&ctx, PyArray_DATA(a), PyArray_DIM(a, 0), (int)PyArray_DIM(a, 1),
                                    row_ld(a), k, soft, PyArray_DATA(val));
    else
        st = t == NPY_FLOAT32
                 ? iis_topk_f(&ctx, PyArray_DATA(a), PyArray_DIM(a, 0), (int)PyArray_DIM(a, 1),
                              row_ld(a), k, soft, PyArray_DATA(idx), PyArray_DATA(val))
                 : iis_topk_d(&ctx, PyArray_DATA(a), PyArray_DIM(a, 0), (int)PyArray_DIM(a, 1),
                              row_ld(a), k, soft, PyArray_DATA(idx), PyArray_DATA(val));
    IIS_END_ALLOW_THREADS
    if (st != IIS_OK) {
        Py_XDECREF(idx);
        Py_DECREF(val);
        return raise_status(st, "topk");
    }
    if (dense) return (PyObject *)val;
    return Py_BuildValue("NN", idx, val);
}

static PyObject *py_keep_count(PyObject *self, PyObject *args, PyObject *kw)
{
    int m, published = 0;
    double s;
    static char *kwl[] = {"m", "s", "published", NULL};
    (void)self;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "id|p", kwl, &m, &s, &published)) return NULL;
    if (m < 0 || !(s >= 0.0 && s < 1.0)) {
        PyErr_SetString(PyExc_ValueError, "keep_count needs m >= 0 and 0 <= s < 1");
        return NULL;
    }
    return PyLong_FromLong(iis_keep_count(m, s, published));
}

/* Fill a design from (X | idx, val, d) plus optional (mu, sigma). */
static int make_design(iis_design *D, PyObject *ox, PyObject *oidx, PyObject *oval, int d,
                       PyObject *omu, PyObject *osg, int t)
{
    memset(D, 0, sizeof(*D));
    if (ox != Py_None) {
        PyArrayObject *x = arr(ox, "X", t, 2, 1);
        if (!x) return -1;
        D->n = PyArray_DIM(x, 0);
        D->d = (int)PyArray_DIM(x, 1);
        D->x = PyArray_DATA(x);
        D->ldx = row_ld(x);
        if (omu != Py_None || osg != Py_None) {
            PyArrayObject *mu = arr(omu, "mu", t, 1, 0), *sg;
            if (!mu || !(sg = arr(osg, "sigma", t, 1, 0))) return -1;
            if (PyArray_DIM(mu, 0) != D->d || PyArray_DIM(sg, 0) != D->d) {
                PyErr_SetString(PyExc_ValueError, "mu/sigma must have one entry per column of X");
                return -1;
            }
            D->mu = PyArray_DATA(mu);
            D->sigma = PyArray_DATA(sg);
        }
        return 0;
    }
    {
        PyArrayObject *idx = arr(oidx, "idx", NPY_INT32, 2, 0), *val;
        if (!idx || !(val = arr(oval, "val", t, 2, 0))) return -1;
        if (PyArray_DIM(idx, 0) != PyArray_DIM(val, 0) || PyArray_DIM(idx, 1) != PyArray_DIM(val, 1)) {
            PyErr_SetString(PyExc_ValueError, "idx and val must have the same shape");
            return -1;
        }
        D->n = PyArray_DIM(idx, 0);
        D->k = (int)PyArray_DIM(idx, 1);
        D->d = d;
        D->idx = PyArray_DATA(idx);
        D->val = PyArray_DATA(val);
        if (d < D->k || d < 0) {
            PyErr_SetString(PyExc_ValueError, "d must be >= the number of kept entries per row");
            return -1;
        }
        {
            const int32_t *ix = D->idx;
            for (int64_t e = 0; e < D->n * (int64_t)D->k; e++)
                if (ix[e] < 0 || ix[e] >= d) {
                    PyErr_Format(PyExc_ValueError, "idx holds %d, outside [0, %d)", ix[e], d);
                    return -1;
                }
        }
    }
    return 0;
}

/* y holds one label in [0, K) per row of an n-row design (n >= 1, K >= 1); -1 with a
 * ValueError otherwise */
static int check_labels(PyArrayObject *y, int64_t n, int K)
{
    const int32_t *yy = PyArray_DATA(y);
    if (PyArray_DIM(y, 0) != n || n < 1) {
        PyErr_Format(PyExc_ValueError, "y has %zd entries for %zd rows (need >= 1)",
                     (Py_ssize_t)PyArray_DIM(y, 0), (Py_ssize_t)n);
        return -1;
    }
    if (K < 1) {
        PyErr_SetString(PyExc_ValueError, "need n_classes >= 1");
        return -1;
    }
    for (int64_t i = 0; i < n; i++)
        if (yy[i] < 0 || yy[i] >= K) {
            PyErr_Format(PyExc_ValueError, "label %d outside [0, %d)", yy[i], K);
            return -1;
        }
    return 0;
}

/* a (n x K logits) has n rows of K entries; -1 with a ValueError otherwise */
static int check_logits(PyArrayObject *a, int64_t n, int K, const char *name)
{
    if (PyArray_DIM(a, 0) != n || PyArray_DIM(a, 1) != K) {
        PyErr_Format(PyExc_ValueError, "%s must be (%zd, %d), got (%zd, %zd)", name, (Py_ssize_t)n, K,
                     (Py_ssize_t)PyArray_DIM(a, 0), (Py_ssize_t)PyArray_DIM(a, 1));
        return -1;
    }
    return 0;
}

/* 1 when the bytes of a and b overlap */
static int arrays_overlap(PyArrayObject *a, PyArrayObject *b)
{
    const char *lo1 = PyArray_DATA(a), *lo2 = PyArray_DATA(b);
    const char *hi1 = lo1 + PyArray_NBYTES(a), *hi2 = lo2 + PyArray_NBYTES(b);
    return lo1 < hi2 && lo2 < hi1;
}

/* logreg_fit(X, idx, val, d, y, n_classes, l2, tol, max_iter, W0, b0, mu, sigma, n_threads
 *            [, precondition=1, start_logits=None, kernels, progress=None]) -> (W, b, n_iter,
 * converged, loss, grad_max, stop); start_logits (n x K, X's dtype): see iis_solver_params;
 * progress: None or a callable of the iis_event fields (trace_hook) */
static PyObject *py_logreg_fit(PyObject *self, PyObject *args, PyObject *kw)
{
    PyObject *ox, *oidx = Py_None, *oval = Py_None, *oy = NULL, *ow = Py_None, *ob = Py_None,
             *omu = Py_None, *osg = Py_None, *ostart = Py_None, *ol2 = NULL, *otol = NULL,
             *oprog = Py_None;
    int d = 0, K = INT_MIN, max_iter = INT_MIN, nt = 1, t, st = 0, precondition = 1;
    double l2, tol;
    const char *kern = "auto";
    int kk;

    iis_design D;
    PyArrayObject *y, *w0, *b0, *w, *b;
    iis_solver_params prm;
    iis_solver_info info;
    hook_state hs = {NULL, 0};
    iis_ctx ctx;
    (void)self;
    static char *kwl[] = {"X", "idx", "val", "d", "y", "n_classes", "l2", "tol", "max_iter", "w0", "b0",
                          "mu", "sigma", "n_threads", "precondition", "start_logits", "kernels", "progress",
                          NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O|OOiOiOOiOOOOiiOsO", kwl, &ox, &oidx, &oval, &d, &oy, &K,
                                     &ol2, &otol, &max_iter, &ow, &ob, &omu, &osg, &nt, &precondition,
                                     &ostart, &kern, &oprog))
        return NULL;
    memset(&prm, 0, sizeof(prm));
    if (set_trace(&prm, &hs, oprog) < 0) return NULL;
    if (!oy) return missing("logreg_fit", "y"), NULL;
    if (K == INT_MIN) return missing("logreg_fit", "n_classes"), NULL;
    if (max_iter == INT_MIN) return missing("logreg_fit", "max_iter"), NULL;
    if (req_double(ol2, "logreg_fit", "l2", &l2) < 0 || req_double(otol, "logreg_fit", "tol", &tol) < 0)
        return NULL;
    if ((kk = parse_kernels(kern)) < 0) return NULL;

    if (precondition < 0 || precondition > 2) {
        PyErr_Format(PyExc_ValueError, "precondition must be 0 (off), 1 (Gram, then class blocks) or 2 "
                     "(Gram only), got %d", precondition);
        return NULL;
    }
    if ((t = float_type(ox != Py_None ? ox : oval, "X")) < 0) return NULL;
    if (make_design(&D, ox, oidx, oval, d, omu, osg, t) < 0) return NULL;
    if (!(y = arr(oy, "y", NPY_INT32, 1, 0)) || check_labels(y, D.n, K) < 0) return NULL;
    if (!(l2 >= 0.0) || !(tol >= 0.0) || max_iter < 0) {
        PyErr_SetString(PyExc_ValueError, "need l2 >= 0, tol >= 0, max_iter >= 0");
        return NULL;
    }
    if ((ow == Py_None) != (ob == Py_None)) {
        PyErr_SetString(PyExc_ValueError, "w0 and b0 are given together (or neither: start at zero)");
        return NULL;
    }
    if (ow == Py_None) {
        npy_intp dw[2] = {D.d, K}, db[1] = {K};
        w = (PyArrayObject *)PyArray_ZEROS(2, dw, t, 0);
        b = (PyArrayObject *)PyArray_ZEROS(1, db, t, 0);
    } else {
        if (!(w0 = arr(ow, "w0", t, 2, 0)) || !(b0 = arr(ob, "b0", t, 1, 0))) return NULL;
        if (PyArray_DIM(w0, 0) != D.d || PyArray_DIM(w0, 1) != K || PyArray_DIM(b0, 0) != K) {
            PyErr_SetString(PyExc_ValueError, "w0 must be (d, n_classes) and b0 (n_classes,)");
            return NULL;
        }
        w = (PyArrayObject *)PyArray_NewCopy(w0, NPY_CORDER);
        b = (PyArrayObject *)PyArray_NewCopy(b0, NPY_CORDER);
    }
    if (!w || !b) {
        Py_XDECREF(w);
        Py_XDECREF(b);
        return NULL;
    }
    prm.l2 = l2;
    prm.tol = tol;
    prm.max_iter = max_iter;
    prm.memory = 10;
    prm.precondition = precondition;
    prm.start_logits = NULL;
    if (ostart != Py_None) {
        PyArrayObject *st0 = arr(ostart, "start_logits", t, 2, 0);
        if (!st0 || check_logits(st0, D.n, K, "start_logits") < 0) {
            Py_DECREF(w);
            Py_DECREF(b);
            return NULL;
        }
        prm.start_logits = PyArray_DATA(st0);
    }
    memset(&info, 0, sizeof(info));
    init_ctx(&ctx, &hs, nt, kk);
    ctx.progress = NULL; /* hs.progress is the solver's trace */
    IIS_BEGIN_ALLOW_THREADS
    st = t == NPY_FLOAT32 ? iis_logreg_fit_f(&ctx, &D, PyArray_DATA(y), K, &prm, PyArray_DATA(w),
                                             PyArray_DATA(b), &info)
                          : iis_logreg_fit_d(&ctx, &D, PyArray_DATA(y), K, &prm, PyArray_DATA(w),
                                             PyArray_DATA(b), &info);
    IIS_END_ALLOW_THREADS
    if (st != IIS_OK || hs.failed) {
        Py_DECREF(w);
        Py_DECREF(b);
        return raise_status(st != IIS_OK ? st : IIS_EINTR, "logreg_fit");
    }
    return Py_BuildValue("NNiiddi", w, b, info.n_iter, info.converged, info.loss, info.grad_max, info.stop);
}

/* logreg_objective(X, idx, val, d, y, K, l2, W, b, mu, sigma, amx, n_threads) -> (f, grad)
 * with grad = [dW (d x K) | db (K)] flattened (float64): one solver pass (tests) */
static PyObject *py_logreg_objective(PyObject *self, PyObject *args, PyObject *kw)
{
    PyObject *ox, *oidx = Py_None, *oval = Py_None, *oy = NULL, *ow = NULL, *ob = NULL, *omu = Py_None,
             *osg = Py_None, *ol2 = NULL;
    int d = 0, K = INT_MIN, nt = 1, t, st = 0, amx = 0;
    double l2, f = 0.0;
    const char *kern = "auto";
    int kk;

    iis_design D;
    PyArrayObject *y, *w, *b, *g;
    hook_state hs = {NULL, 0};
    iis_ctx ctx;
    (void)self;
    static char *kwl[] = {"X", "idx", "val", "d", "y", "n_classes", "l2", "w", "b", "mu", "sigma", "amx",
                          "n_threads", "kernels", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O|OOiOiOOOOOiis", kwl, &ox, &oidx, &oval, &d, &oy, &K, &ol2,
                                     &ow, &ob, &omu, &osg, &amx, &nt, &kern))
        return NULL;
    if (!oy || !ow || !ob || K == INT_MIN) return missing("logreg_objective", "y, n_classes, w and b"), NULL;
    if (req_double(ol2, "logreg_objective", "l2", &l2) < 0) return NULL;
    if ((kk = parse_kernels(kern)) < 0) return NULL;

    if (amx < 0 || amx > 2) {
        PyErr_SetString(PyExc_ValueError, "logreg_objective: amx must be 0 (float passes), 1 (bf16 AMX) or "
                                          "2 (precise AMX)");
        return NULL;
    }
    if ((t = float_type(ox != Py_None ? ox : oval, "X")) < 0) return NULL;
    if (make_design(&D, ox, oidx, oval, d, omu, osg, t) < 0) return NULL;
    if (!(y = arr(oy, "y", NPY_INT32, 1, 0)) || check_labels(y, D.n, K) < 0) return NULL;
    if (!(l2 >= 0.0)) {
        PyErr_SetString(PyExc_ValueError, "need l2 >= 0");
        return NULL;
    }
    if (!(w = arr(ow, "W", t, 2, 0)) || !(b = arr(ob, "b", t, 1, 0))) return NULL;
    if (PyArray_DIM(w, 0) != D.d || PyArray_DIM(w, 1) != K || PyArray_DIM(b, 0) != K) {
        PyErr_SetString(PyExc_ValueError, "W must be (d, n_classes) and b (n_classes,)");
        return NULL;
    }
    {
        npy_intp dims[1] = {(npy_intp)D.d * K + K};
        if (!(g = (PyArrayObject *)PyArray_EMPTY(1, dims, NPY_FLOAT64, 0))) return NULL;
    }
    init_ctx(&ctx, &hs, nt, kk);
    IIS_BEGIN_ALLOW_THREADS
    st = t == NPY_FLOAT32 ? iis_logreg_objective_f(&ctx, &D, PyArray_DATA(y), K, l2, PyArray_DATA(w),
                                                   PyArray_DATA(b), amx, &f, PyArray_DATA(g))
                          : iis_logreg_objective_d(&ctx, &D, PyArray_DATA(y), K, l2, PyArray_DATA(w),
                                                   PyArray_DATA(b), amx, &f, PyArray_DATA(g));
    IIS_END_ALLOW_THREADS
    if (st != IIS_OK) {
        Py_DECREF(g);
        if (st == IIS_EINVAL && amx) {
            PyErr_SetString(PyExc_ValueError, "logreg_objective: the AMX pass does not apply here "
                                              "(float32 dense X, AMX-BF16 and IIS_KERNELS=auto needed)");
            return NULL;
        }
        return raise_status(st, "logreg_objective");
    }
    return Py_BuildValue("dN", f, g);
}

/* logreg_predict(X, idx, val, d, W, b, mu, sigma, n_threads) -> (logits, pred) */
static PyObject *py_logreg_predict(PyObject *self, PyObject *args, PyObject *kw)
{
    PyObject *ox, *oidx = Py_None, *oval = Py_None, *ow = NULL, *ob = NULL, *omu = Py_None, *osg = Py_None;
    int d = 0, nt = 1, t, st = 0, K;
    const char *kern = "auto";
    int kk;

    iis_design D;
    PyArrayObject *w, *b, *logits, *pred;
    hook_state hs = {NULL, 0};
    iis_ctx ctx;
    (void)self;
    static char *kwl[] = {"X", "idx", "val", "d", "w", "b", "mu", "sigma", "n_threads", "kernels", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O|OOiOOOOis", kwl, &ox, &oidx, &oval, &d, &ow, &ob, &omu, &osg,
                                     &nt, &kern))
        return NULL;
    if (!ow || !ob) return missing("logreg_predict", "w and b"), NULL;
    if ((kk = parse_kernels(kern)) < 0) return NULL;

    if ((t = float_type(ox != Py_None ? ox : oval, "X")) < 0) return NULL;
    if (make_design(&D, ox, oidx, oval, d, omu, osg, t) < 0) return NULL;
    if (!(w = arr(ow, "W", t, 2, 0)) || !(b = arr(ob, "b", t, 1, 0))) return NULL;
    K = (int)PyArray_DIM(w, 1);
    if (PyArray_DIM(w, 0) != D.d || PyArray_DIM(b, 0) != K || K < 1) {
        PyErr_Format(PyExc_ValueError, "W must be (%d, K) and b (K,)", D.d);
        return NULL;
    }
    {
        npy_intp dl[2] = {D.n, K}, dp[1] = {D.n};
        logits = (PyArrayObject *)PyArray_EMPTY(2, dl, t, 0);
        pred = (PyArrayObject *)PyArray_EMPTY(1, dp, NPY_INT32, 0);
    }
    if (!logits || !pred) {
        Py_XDECREF(logits);
        Py_XDECREF(pred);
        return NULL;
    }
    init_ctx(&ctx, &hs, nt, kk);
    IIS_BEGIN_ALLOW_THREADS
    st = t == NPY_FLOAT32 ? iis_logreg_predict_f(&ctx, &D, K, PyArray_DATA(w), PyArray_DATA(b),
                                                 PyArray_DATA(logits), PyArray_DATA(pred))
                          : iis_logreg_predict_d(&ctx, &D, K, PyArray_DATA(w), PyArray_DATA(b),
                                                 PyArray_DATA(logits), PyArray_DATA(pred));
    IIS_END_ALLOW_THREADS
    if (st != IIS_OK) {
        Py_DECREF(logits);
        Py_DECREF(pred);
        return raise_status(st, "logreg_predict");
    }
    return Py_BuildValue("NN", logits, pred);
}

/* logreg_precond(X, mu, sigma, l2, n_threads[, amx=False]) -> P, the solver's
 * preconditioner matrix ((d+1) x (d+1) float64; see iis_logreg_precond) */
static PyObject *py_logreg_precond(PyObject *self, PyObject *args, PyObject *kw)
{
    PyObject *ox, *omu = Py_None, *osg = Py_None, *ol2 = NULL;
    int nt = 1, t, st = 0, amx = 0;
    double l2;
    const char *kern = "auto";
    int kk;

    iis_design D;
    PyArrayObject *P;
    hook_state hs = {NULL, 0};
    iis_ctx ctx;
    (void)self;
    static char *kwl[] = {"X", "mu", "sigma", "l2", "n_threads", "amx", "kernels", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O|OOOips", kwl, &ox, &omu, &osg, &ol2, &nt, &amx, &kern))
        return NULL;
    if (req_double(ol2, "logreg_precond", "l2", &l2) < 0) return NULL;
    if ((kk = parse_kernels(kern)) < 0) return NULL;

    if ((t = float_type(ox, "X")) < 0) return NULL;
    if (make_design(&D, ox, Py_None, Py_None, 0, omu, osg, t) < 0) return NULL;
    if (D.n < 1 || D.d < 1 || !(l2 >= 0.0)) {
        PyErr_SetString(PyExc_ValueError, "logreg_precond needs a non-empty X and l2 >= 0");
        return NULL;
    }
    {
        npy_intp dims[2] = {(npy_intp)D.d + 1, (npy_intp)D.d + 1};
        if (!(P = (PyArrayObject *)PyArray_EMPTY(2, dims, NPY_FLOAT64, 0))) return NULL;
    }
    init_ctx(&ctx, &hs, nt, kk);
    IIS_BEGIN_ALLOW_THREADS
    st = t == NPY_FLOAT32 ? iis_logreg_precond_f(&ctx, &D, l2, amx, PyArray_DATA(P))
                          : iis_logreg_precond_d(&ctx, &D, l2, amx, PyArray_DATA(P));
    IIS_END_ALLOW_THREADS
    if (st != IIS_OK) {
        Py_DECREF(P);
        if (st == IIS_EINVAL && amx) {
            PyErr_SetString(PyExc_ValueError, "logreg_precond: the AMX Gram does not apply here "
                                              "(float32 X, AMX-BF16 and IIS_KERNELS=auto needed)");
            return NULL;
        }
        return raise_status(st, "logreg_precond");
    }
    return (PyObject *)P;
}

/* path(Atr, ytr, Aev, yev, n_classes, s, soft, published, l2, tol, max_iter, n_threads,
 *      progress[, overwrite=False, precondition=1, train_logits0=None]) -> (accuracy, kept,
 *      n_iter, converged, stop); with overwrite, hard masks are applied in place to Atr and Aev
 *      (see iis_path_params); train_logits0 (ntr x K, writable) receives the s[0] IP's train
 *      logits; progress: None or a callable of the iis_event fields (trace_hook) */
static PyObject *py_path(PyObject *self, PyObject *args, PyObject *kw)
{
    PyObject *oatr, *oytr, *oaev, *oyev, *os = NULL, *oprog = Py_None, *ologits = Py_None, *ol2 = NULL,
             *otol = NULL;
    int K = INT_MIN, soft = 0, published = 0, max_iter = INT_MIN, nt = 1, t, st = 0, m, ns, overwrite = 0,
        precondition = 1;
    double l2, tol;
    const char *kern = "auto";
    int kk;

    PyArrayObject *atr, *ytr, *aev, *yev, *s, *acc = NULL, *kept = NULL, *nit = NULL, *conv = NULL,
                  *stopa = NULL;
    iis_path_params prm;
    iis_path_result res;
    hook_state hs = {NULL, 0};
    iis_ctx ctx;
    (void)self;
    static char *kwl[] = {"atr", "ytr", "aev", "yev", "n_classes", "sparsities", "soft", "published", "l2",
                          "tol", "max_iter", "n_threads", "progress", "overwrite", "precondition",
                          "train_logits0", "kernels", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOO|iOppOOiiOpiOs", kwl, &oatr, &oytr, &oaev, &oyev, &K, &os,
                                     &soft, &published, &ol2, &otol, &max_iter, &nt, &oprog, &overwrite,
                                     &precondition, &ologits, &kern))
        return NULL;
    if (K == INT_MIN || !os || max_iter == INT_MIN)
        return missing("path", "n_classes, sparsities and max_iter"), NULL;
    if (req_double(ol2, "path", "l2", &l2) < 0 || req_double(otol, "path", "tol", &tol) < 0) return NULL;
    if ((kk = parse_kernels(kern)) < 0) return NULL;

    if (precondition < 0 || precondition > 2) {
        PyErr_Format(PyExc_ValueError, "precondition must be 0 (off), 1 (Gram, then class blocks) or 2 "
                     "(Gram only), got %d", precondition);
        return NULL;
    }
    if ((t = float_type(oatr, "train activations")) < 0) return NULL;
    if (!(atr = arr(oatr, "train activations", t, 2, 0)) ||
        !(aev = arr(oaev, "eval activations", t, 2, 0)) || !(ytr = arr(oytr, "y_train", NPY_INT32, 1, 0)) ||
        !(yev = arr(oyev, "y_eval", NPY_INT32, 1, 0)) || !(s = arr(os, "sparsities", NPY_FLOAT64, 1, 0)))
        return NULL;
    m = (int)PyArray_DIM(atr, 1);
    ns = (int)PyArray_DIM(s, 0);
    if (PyArray_DIM(aev, 1) != m || PyArray_DIM(ytr, 0) != PyArray_DIM(atr, 0) ||
        PyArray_DIM(yev, 0) != PyArray_DIM(aev, 0) || PyArray_DIM(atr, 0) < 1 ||
        PyArray_DIM(aev, 0) < 1 || m < 1 || ns < 1 || K < 1) {
        PyErr_SetString(PyExc_ValueError, "path: inconsistent or empty shapes");
        return NULL;
    }
    {
        const double *sv = PyArray_DATA(s);
        for (int i = 0; i < ns; i++)
            if (!(sv[i] >= 0.0 && sv[i] < 1.0) || (i > 0 && sv[i] <= sv[i - 1])) {
                PyErr_SetString(PyExc_ValueError, "sparsities must be increasing and in [0, 1)");
                return NULL;
            }
        const int32_t *y1 = PyArray_DATA(ytr), *y2 = PyArray_DATA(yev);
        for (npy_intp i = 0; i < PyArray_DIM(ytr, 0); i++)
            if (y1[i] < 0 || y1[i] >= K) {
                PyErr_Format(PyExc_ValueError, "train label %d outside [0, %d)", y1[i], K);
                return NULL;
            }
        for (npy_intp i = 0; i < PyArray_DIM(yev, 0); i++)
            if (y2[i] < 0 || y2[i] >= K) {
                PyErr_Format(PyExc_ValueError, "eval label %d outside [0, %d)", y2[i], K);
                return NULL;
            }
    }
    memset(&prm, 0, sizeof(prm));
    if (set_trace(&prm.solver, &hs, oprog) < 0) return NULL;
    if (overwrite) { /* masks are written into the activations: two separate writable arrays */
        if (!PyArray_ISWRITEABLE(atr) || !PyArray_ISWRITEABLE(aev) || arrays_overlap(atr, aev)) {
            PyErr_SetString(PyExc_ValueError,
                            "path(overwrite=True) needs two separate, writable activation arrays");
            return NULL;
        }
    }
    {
        npy_intp dims[1] = {ns};
        acc = (PyArrayObject *)PyArray_EMPTY(1, dims, NPY_FLOAT64, 0);
        kept = (PyArrayObject *)PyArray_EMPTY(1, dims, NPY_INT32, 0);
        nit = (PyArrayObject *)PyArray_EMPTY(1, dims, NPY_INT32, 0);
        conv = (PyArrayObject *)PyArray_EMPTY(1, dims, NPY_INT32, 0);
        stopa = (PyArrayObject *)PyArray_EMPTY(1, dims, NPY_INT32, 0);
    }
    if (!acc || !kept || !nit || !conv || !stopa) goto fail;
    prm.soft = soft;
    prm.published_keep = published;
    prm.overwrite = overwrite;
    prm.solver.l2 = l2;
    prm.solver.tol = tol;
    prm.solver.max_iter = max_iter;
    prm.solver.memory = 10;
    prm.solver.precondition = precondition;
    res.accuracy = PyArray_DATA(acc);
    res.kept = PyArray_DATA(kept);
    res.n_iter = PyArray_DATA(nit);
    res.converged = PyArray_DATA(conv);
    res.stop = PyArray_DATA(stopa);
    res.train_logits0 = NULL;
    if (ologits != Py_None) {
        PyArrayObject *lg = arr(ologits, "train_logits0", t, 2, 0);
        if (!lg || check_logits(lg, PyArray_DIM(atr, 0), K, "train_logits0") < 0) goto fail;
        if (!PyArray_ISWRITEABLE(lg) || arrays_overlap(lg, atr) || arrays_overlap(lg, aev)) {
            PyErr_SetString(PyExc_ValueError, "train_logits0 must be writable and apart from the activations");
            goto fail;
        }
        res.train_logits0 = PyArray_DATA(lg);
    }
    init_ctx(&ctx, &hs, nt, kk);
    ctx.progress = NULL; /* hs.progress is the solver's trace */
    IIS_BEGIN_ALLOW_THREADS
    st = t == NPY_FLOAT32
             ? iis_path_f(&ctx, PyArray_DATA(atr), PyArray_DIM(atr, 0), PyArray_DATA(ytr),
                          PyArray_DATA(aev), PyArray_DIM(aev, 0), PyArray_DATA(yev), m, K,
                          PyArray_DATA(s), ns, &prm, &res)
             : iis_path_d(&ctx, PyArray_DATA(atr), PyArray_DIM(atr, 0), PyArray_DATA(ytr),
                          PyArray_DATA(aev), PyArray_DIM(aev, 0), PyArray_DATA(yev), m, K,
                          PyArray_DATA(s), ns, &prm, &res);
    IIS_END_ALLOW_THREADS
    if (st != IIS_OK || hs.failed) {
        raise_status(st != IIS_OK ? st : IIS_EINTR, "path");
        goto fail;
    }
    return Py_BuildValue("NNNNN", acc, kept, nit, conv, stopa);
fail:
    Py_XDECREF(acc);
    Py_XDECREF(kept);
    Py_XDECREF(nit);
    Py_XDECREF(conv);
    Py_XDECREF(stopa);
    return NULL;
}

/* kmeans(X, k, seed, max_iter, tol, n_threads) -> (centers, labels, inertia, n_iter) */
static PyObject *py_kmeans(PyObject *self, PyObject *args, PyObject *kw)
{
    PyObject *ox;
    int k, max_iter = 300, nt = 1, t, st = 0, nit = 0;
    unsigned long long seed = 0;
    double tol = 1e-4, inertia = 0.0;
    const char *kern = "auto";
    int kk;

    PyArrayObject *x, *cen, *lab;
    hook_state hs = {NULL, 0};
    iis_ctx ctx;
    (void)self;
    static char *kwl[] = {"X", "k", "seed", "max_iter", "tol", "n_threads", "kernels", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kw, "Oi|Kidis", kwl, &ox, &k, &seed, &max_iter, &tol, &nt, &kern))
        return NULL;
    if ((kk = parse_kernels(kern)) < 0) return NULL;

    if ((t = float_type(ox, "elements")) < 0 || !(x = arr(ox, "elements", t, 2, 0))) return NULL;
    if (k < 1 || k > PyArray_DIM(x, 0) || PyArray_DIM(x, 1) < 1 || max_iter < 0 || !(tol >= 0)) {
        PyErr_Format(PyExc_ValueError, "kmeans needs 1 <= k <= n (k=%d, n=%zd), d >= 1", k,
                     (Py_ssize_t)PyArray_DIM(x, 0));
        return NULL;
    }
    {
        npy_intp dc[2] = {k, PyArray_DIM(x, 1)}, dl[1] = {PyArray_DIM(x, 0)};
        cen = (PyArrayObject *)PyArray_EMPTY(2, dc, t, 0);
        lab = (PyArrayObject *)PyArray_EMPTY(1, dl, NPY_INT32, 0);
    }
    if (!cen || !lab) {
        Py_XDECREF(cen);
        Py_XDECREF(lab);
        return NULL;
    }
    init_ctx(&ctx, &hs, nt, kk);
    IIS_BEGIN_ALLOW_THREADS
    st = t == NPY_FLOAT32
             ? iis_kmeans_f(&ctx, PyArray_DATA(x), PyArray_DIM(x, 0), (int)PyArray_DIM(x, 1), k,
                            (uint64_t)seed, max_iter, tol, PyArray_DATA(cen), PyArray_DATA(lab),
                            &inertia, &nit)
             : iis_kmeans_d(&ctx, PyArray_DATA(x), PyArray_DIM(x, 0), (int)PyArray_DIM(x, 1), k,
                            (uint64_t)seed, max_iter, tol, PyArray_DATA(cen), PyArray_DATA(lab),
                            &inertia, &nit);
    IIS_END_ALLOW_THREADS
    if (st != IIS_OK) {
        Py_DECREF(cen);
        Py_DECREF(lab);
        return raise_status(st, "kmeans");
    }
    return Py_BuildValue("NNdi", cen, lab, inertia, nit);
}

static PyObject *py_trapezoid(PyObject *self, PyObject *args, PyObject *kw)
{
    PyObject *os, *oa;
    PyArrayObject *s, *a;
    (void)self;
    static char *kwl[] = {"s", "arr", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OO", kwl, &os, &oa)) return NULL;
    if (!(s = arr(os, "s", NPY_FLOAT64, 1, 0)) || !(a = arr(oa, "arr", NPY_FLOAT64, 1, 0))) return NULL;
    if (PyArray_DIM(s, 0) != PyArray_DIM(a, 0)) {
        PyErr_SetString(PyExc_ValueError, "s and arr must have the same length");
        return NULL;
    }
    return PyFloat_FromDouble(iis_trapezoid(PyArray_DATA(s), PyArray_DATA(a), (int)PyArray_DIM(s, 0)));
}

static PyObject *py_accuracy(PyObject *self, PyObject *args, PyObject *kw)
{
    PyObject *op, *oy;
    PyArrayObject *p, *y;
    (void)self;
    static char *kwl[] = {"pred", "y", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OO", kwl, &op, &oy)) return NULL;
    if (!(p = arr(op, "pred", NPY_INT32, 1, 0)) || !(y = arr(oy, "y", NPY_INT32, 1, 0))) return NULL;
    if (PyArray_DIM(p, 0) != PyArray_DIM(y, 0)) {
        PyErr_SetString(PyExc_ValueError, "pred and y must have the same length");
        return NULL;
    }
    return PyFloat_FromDouble(iis_accuracy(PyArray_DATA(p), PyArray_DATA(y), PyArray_DIM(p, 0)));
}

static const char *kernels_name(int k)
{
    return k == IIS_KERNELS_BLAS ? "blas" : "auto";
}

static PyObject *py_config(PyObject *self, PyObject *args, PyObject *kw)
{
    iis_ctx ctx;
    hook_state hs = {NULL, 0};
    static char *kwl[] = {"kernels", NULL};
    PyObject *omp;
    int omp_max;
    const char *kern = "auto";
    int kk;
    (void)self;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|s", kwl, &kern)) return NULL;
    if ((kk = parse_kernels(kern)) < 0) return NULL;

    init_ctx(&ctx, &hs, 1, kk);
#ifdef _OPENMP
    if (!(omp = PyLong_FromLong(_OPENMP))) return NULL;
    omp_max = omp_get_max_threads();
#else
    Py_INCREF(Py_None);
    omp = Py_None;
    omp_max = 1;
#endif
    return Py_BuildValue("{s:N,s:i,s:O,s:O,s:s,s:s,s:O,s:s}", "openmp", omp, "omp_max_threads", omp_max,
                         "blas_set", (g_blas.sgemm && g_blas.dgemm) ? Py_True : Py_False,
                         "precondition_set",
                         (g_blas.ssyrk && g_blas.dsyrk && g_blas.dtrsm && g_blas.dpotrf) ? Py_True
                                                                                         : Py_False,
                         "kernels", kernels_name(kk), "cpu_simd", iis_cpu_simd(),
                         "cpu_amx", iis_amx_available() ? Py_True : Py_False,
                         "solver_f32", iis_solver_kernel(&ctx));
}

/* ---- text_objective(F, T, W, n_threads) -> (sim, J, dJ/dW) ---------------- */
static PyObject *py_text_objective(PyObject *self, PyObject *args, PyObject *kw)
{
    PyObject *of, *ot, *ow;
    int nt = 1, t, st = 0, c;
    const char *kern = "auto";
    int kk;

    double obj = 0.0;
    PyArrayObject *f, *tg, *w, *sim, *grad;
    hook_state hs = {NULL, 0};
    iis_ctx ctx;
    (void)self;
    static char *kwl[] = {"features", "targets", "w", "n_threads", "kernels", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOO|is", kwl, &of, &ot, &ow, &nt, &kern)) return NULL;
    if ((kk = parse_kernels(kern)) < 0) return NULL;

    if ((t = float_type(of, "features")) < 0) return NULL;
    if (!(f = arr(of, "features", t, 2, 1)) || !(tg = arr(ot, "targets", t, 2, 1)) ||
        !(w = arr(ow, "W", t, 2, 0)))
        return NULL;
    c = (int)PyArray_DIM(w, 0);
    if (PyArray_DIM(f, 0) < 1 || PyArray_DIM(f, 1) < 1 || c < 1 ||
        PyArray_DIM(tg, 0) != PyArray_DIM(f, 0) || PyArray_DIM(tg, 1) != c ||
        PyArray_DIM(w, 1) != PyArray_DIM(f, 1)) {
        PyErr_SetString(PyExc_ValueError,
                        "text_objective needs F (n, d), T (n, C), W (C, d) with n, d, C >= 1");
        return NULL;
    }
    {
        npy_intp ds[1] = {c}, dg[2] = {c, PyArray_DIM(f, 1)};
        sim = (PyArrayObject *)PyArray_EMPTY(1, ds, NPY_FLOAT64, 0);
        grad = (PyArrayObject *)PyArray_EMPTY(2, dg, t, 0);
    }
    if (!sim || !grad) {
        Py_XDECREF(sim);
        Py_XDECREF(grad);
        return NULL;
    }
    init_ctx(&ctx, &hs, nt, kk);
    IIS_BEGIN_ALLOW_THREADS
    st = t == NPY_FLOAT32
             ? iis_text_objective_f(&ctx, PyArray_DATA(f), PyArray_DIM(f, 0), (int)PyArray_DIM(f, 1),
                                    row_ld(f), PyArray_DATA(tg), row_ld(tg), PyArray_DATA(w), c,
                                    PyArray_DATA(sim), &obj, PyArray_DATA(grad))
             : iis_text_objective_d(&ctx, PyArray_DATA(f), PyArray_DIM(f, 0), (int)PyArray_DIM(f, 1),
                                    row_ld(f), PyArray_DATA(tg), row_ld(tg), PyArray_DATA(w), c,
                                    PyArray_DATA(sim), &obj, PyArray_DATA(grad));
    IIS_END_ALLOW_THREADS
    if (st != IIS_OK) {
        Py_DECREF(sim);
        Py_DECREF(grad);
        return raise_status(st, "text_objective");
    }
    return Py_BuildValue("NdN", sim, obj, grad);
}

/* text_fit(Ftr, Ttr, Fva, Tva, C, W0, steps, eval_every, patience, lr, beta1, beta2, eps, seed,
 *          n_threads, progress)
 * -> (W, val_sim, train_history, val_history, val_steps, n_steps, best_step, best_val, n_evals) */
static PyObject *py_text_fit(PyObject *self, PyObject *args, PyObject *kw)
{
    PyObject *oftr, *ottr, *ofva, *otva, *ow0 = Py_None, *oprog = Py_None;
    int c = INT_MIN, steps = INT_MIN, every = 1, patience = 1, nt = 1, t, st = 0, d;
    double lr = 1e-3, b1 = 0.9, b2 = 0.999, eps = 1e-8;
    unsigned long long seed = 0;
    const char *kern = "auto";
    int kk;

    PyArrayObject *ftr, *ttr, *fva, *tva, *w0 = NULL, *w = NULL, *vsim = NULL, *th = NULL,
                                                     *vh = NULL, *vs = NULL;
    iis_text_params prm;
    iis_text_result res;
    hook_state hs = {NULL, 0};
    iis_ctx ctx;
    (void)self;
    static char *kwl[] = {"f_train", "t_train", "f_val", "t_val", "n_concepts", "w0", "steps", "eval_every",
                          "patience", "lr", "beta1", "beta2", "eps", "seed", "n_threads", "progress",
                          "kernels", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOO|iOiiiddddKiOs", kwl, &oftr, &ottr, &ofva, &otva, &c, &ow0,
                                     &steps, &every, &patience, &lr, &b1, &b2, &eps, &seed, &nt, &oprog,
                                     &kern))
        return NULL;
    if (c == INT_MIN || steps == INT_MIN) return missing("text_fit", "n_concepts and steps"), NULL;
    if ((kk = parse_kernels(kern)) < 0) return NULL;

    if ((t = float_type(oftr, "train features")) < 0) return NULL;
    if (!(ftr = arr(oftr, "train features", t, 2, 1)) || !(ttr = arr(ottr, "train targets", t, 2, 1)) ||
        !(fva = arr(ofva, "held-out features", t, 2, 1)) ||
        !(tva = arr(otva, "held-out targets", t, 2, 1)))
        return NULL;
    d = (int)PyArray_DIM(ftr, 1);
    if (PyArray_DIM(ftr, 0) < 1 || PyArray_DIM(fva, 0) < 1 || d < 1 || c < 1 ||
        PyArray_DIM(fva, 1) != d || PyArray_DIM(ttr, 0) != PyArray_DIM(ftr, 0) ||
        PyArray_DIM(tva, 0) != PyArray_DIM(fva, 0) || PyArray_DIM(ttr, 1) != c ||
        PyArray_DIM(tva, 1) != c) {
        PyErr_SetString(PyExc_ValueError, "text_fit: inconsistent or empty shapes");
        return NULL;
    }
    if (steps < 0 || every < 1 || patience < 1 || !(lr > 0.0) || !(b1 >= 0.0 && b1 < 1.0) ||
        !(b2 >= 0.0 && b2 < 1.0) || !(eps >= 0.0)) {
        PyErr_SetString(PyExc_ValueError, "text_fit needs steps >= 0, eval_every >= 1, patience >= 1, "
                                          "lr > 0, 0 <= beta < 1, eps >= 0");
        return NULL;
    }
    if (oprog != Py_None && !PyCallable_Check(oprog)) {
        PyErr_SetString(PyExc_TypeError, "progress must be callable or None");
        return NULL;
    }
    if (ow0 != Py_None) {
        if (!(w0 = arr(ow0, "W0", t, 2, 0))) return NULL;
        if (PyArray_DIM(w0, 0) != c || PyArray_DIM(w0, 1) != d) {
            PyErr_SetString(PyExc_ValueError, "W0 must be (C, d)");
            return NULL;
        }
        w = (PyArrayObject *)PyArray_NewCopy(w0, NPY_CORDER);
    } else {
        npy_intp dw[2] = {c, d};
        w = (PyArrayObject *)PyArray_EMPTY(2, dw, t, 0);
    }
    {
        npy_intp dc[1] = {c}, dh[1] = {steps}, dv[1] = {steps / every + 2};
        vsim = (PyArrayObject *)PyArray_EMPTY(1, dc, NPY_FLOAT64, 0);
        th = (PyArrayObject *)PyArray_EMPTY(1, dh, NPY_FLOAT64, 0);
        vh = (PyArrayObject *)PyArray_EMPTY(1, dv, NPY_FLOAT64, 0);
        vs = (PyArrayObject *)PyArray_EMPTY(1, dv, NPY_INT32, 0);
    }
    if (!w || !vsim || !th || !vh || !vs) goto fail;
    memset(&prm, 0, sizeof(prm));
    prm.steps = steps;
    prm.eval_every = every;
    prm.patience = patience;
    prm.lr = lr;
    prm.beta1 = b1;
    prm.beta2 = b2;
    prm.eps = eps;
    prm.seed = (uint64_t)seed;
    prm.init_given = w0 != NULL;
    memset(&res, 0, sizeof(res));
    res.train_history = PyArray_DATA(th);
    res.val_history = PyArray_DATA(vh);
    res.val_steps = PyArray_DATA(vs);
    res.val_sim = PyArray_DATA(vsim);
    hs.progress = oprog != Py_None ? oprog : NULL;
    init_ctx(&ctx, &hs, nt, kk);
    IIS_BEGIN_ALLOW_THREADS
    st = t == NPY_FLOAT32
             ? iis_text_fit_f(&ctx, PyArray_DATA(ftr), PyArray_DIM(ftr, 0), d, row_ld(ftr),
                              PyArray_DATA(ttr), row_ld(ttr), PyArray_DATA(fva), PyArray_DIM(fva, 0),
                              row_ld(fva), PyArray_DATA(tva), row_ld(tva), c, &prm, PyArray_DATA(w),
                              &res)
             : iis_text_fit_d(&ctx, PyArray_DATA(ftr), PyArray_DIM(ftr, 0), d, row_ld(ftr),
                              PyArray_DATA(ttr), row_ld(ttr), PyArray_DATA(fva), PyArray_DIM(fva, 0),
                              row_ld(fva), PyArray_DATA(tva), row_ld(tva), c, &prm, PyArray_DATA(w),
                              &res);
    IIS_END_ALLOW_THREADS
    if (st != IIS_OK || hs.failed) {
        raise_status(st != IIS_OK ? st : IIS_EINTR, "text_fit");
        goto fail;
    }
    return Py_BuildValue("NNNNNiidi", w, vsim, th, vh, vs, res.n_steps, res.best_step,
                         res.best_val, res.n_evals);
fail:
    Py_XDECREF(w);
    Py_XDECREF(vsim);
    Py_XDECREF(th);
    Py_XDECREF(vh);
    Py_XDECREF(vs);
    return NULL;
}

/* ==== End2End (end2end.c) ================================================== */
/* checked float64 inputs of the End2End calls: el (ne, d), f (n, d), y (n), q (ne, m),
 * w (K, m), b (K); -1 with an exception otherwise */
static int e2e_args(PyObject *oel, PyObject *of, PyObject *oy, int K, PyObject *oq, PyObject *ow,
                    PyObject *ob, PyArrayObject **el, PyArrayObject **f, PyArrayObject **y,
                    PyArrayObject **q, PyArrayObject **w, PyArrayObject **b)
{
    if (!(*el = arr(oel, "elements", NPY_FLOAT64, 2, 0)) || !(*f = arr(of, "features", NPY_FLOAT64, 2, 0)) ||
        !(*y = arr(oy, "labels", NPY_INT32, 1, 0)) || !(*q = arr(oq, "q", NPY_FLOAT64, 2, 0)) ||
        !(*w = arr(ow, "W", NPY_FLOAT64, 2, 0)) || !(*b = arr(ob, "b", NPY_FLOAT64, 1, 0)))
        return -1;
    if (PyArray_DIM(*el, 0) < 1 || PyArray_DIM(*el, 1) < 1 || PyArray_DIM(*f, 1) != PyArray_DIM(*el, 1) ||
        PyArray_DIM(*q, 0) != PyArray_DIM(*el, 0) || PyArray_DIM(*q, 1) < 1 || K < 2 ||
        PyArray_DIM(*w, 0) != K || PyArray_DIM(*w, 1) != PyArray_DIM(*q, 1) || PyArray_DIM(*b, 0) != K) {
        PyErr_SetString(PyExc_ValueError, "End2End needs elements (E, d), features (n, d), q (E, M), "
                                          "W (K, M), b (K) with E, d, M >= 1 and K >= 2");
        return -1;
    }
    return check_labels(*y, PyArray_DIM(*f, 0), K);
}

static int e2e_prm(iis_e2e_params *prm, int k, int m, double tau, double l2)
{
    memset(prm, 0, sizeof(*prm));
    if (k < 1 || k > m || !(tau > 0.0) || !(l2 >= 0.0)) {
        PyErr_SetString(PyExc_ValueError, "End2End needs 1 <= k <= M, temperature > 0, l2 >= 0");
        return -1;
    }
    prm->k = k;
    prm->temperature = tau;
    prm->l2 = l2;
    return 0;
}

/* e2e_objective(elements, features, labels, n_classes, q, w, b, *, k, temperature, l2=0,
 *               noise=None, a_given=None, n_threads=1) -> (loss, dq, dW, db, dA) */
static PyObject *py_e2e_objective(PyObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"elements", "features", "labels", "n_classes", "q", "w", "b", "k",
                             "temperature", "l2", "noise", "a_given", "n_threads", NULL};
    PyObject *oel, *of, *oy, *oq, *ow, *ob, *onoise = Py_None, *oa = Py_None;
    PyArrayObject *el, *f, *y, *q, *w, *b, *noise = NULL, *ag = NULL, *out[4] = {NULL, NULL, NULL, NULL};
    int K, k = -1, nt = 1, st, m;
    double tau = NAN, l2 = 0.0, loss = 0.0; /* k and temperature are required */
    iis_e2e_params prm;
    hook_state hs = {NULL, 0};
    iis_ctx ctx;
    (void)self;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOiOOO|$iddOOi", kwlist, &oel, &of, &oy, &K, &oq, &ow,
                                     &ob, &k, &tau, &l2, &onoise, &oa, &nt))
        return NULL;
    if (e2e_args(oel, of, oy, K, oq, ow, ob, &el, &f, &y, &q, &w, &b) < 0) return NULL;
    m = (int)PyArray_DIM(q, 1);
    if (e2e_prm(&prm, k, m, tau, l2) < 0) return NULL;
    if (onoise != Py_None && !(noise = arr(onoise, "noise", NPY_FLOAT64, 2, 0))) return NULL;
    if (oa != Py_None && !(ag = arr(oa, "a_given", NPY_FLOAT64, 2, 0))) return NULL;
    if ((noise && PyArray_SIZE(noise) != PyArray_SIZE(q)) || (ag && PyArray_SIZE(ag) != PyArray_SIZE(q))) {
        PyErr_SetString(PyExc_ValueError, "noise and a_given must have the shape of q");
        return NULL;
    }
    {
        npy_intp dq[2] = {PyArray_DIM(q, 0), m}, dw[2] = {K, m}, db[1] = {K};
        out[0] = (PyArrayObject *)PyArray_EMPTY(2, dq, NPY_FLOAT64, 0);
        out[1] = (PyArrayObject *)PyArray_EMPTY(2, dw, NPY_FLOAT64, 0);
        out[2] = (PyArrayObject *)PyArray_EMPTY(1, db, NPY_FLOAT64, 0);
        out[3] = (PyArrayObject *)PyArray_EMPTY(2, dq, NPY_FLOAT64, 0);
    }
    if (!out[0] || !out[1] || !out[2] || !out[3]) goto fail;
    init_ctx(&ctx, &hs, nt, IIS_KERNELS_AUTO); /* BLAS only: no hardware-specific kernel */
    IIS_BEGIN_ALLOW_THREADS
    st = iis_e2e_objective(&ctx, PyArray_DATA(el), PyArray_DIM(el, 0), (int)PyArray_DIM(el, 1),
                           PyArray_DATA(f), PyArray_DIM(f, 0), PyArray_DATA(y), K, m, &prm,
                           PyArray_DATA(q), PyArray_DATA(w), PyArray_DATA(b),
                           noise ? PyArray_DATA(noise) : NULL, ag ? PyArray_DATA(ag) : NULL, &loss,
                           PyArray_DATA(out[0]), PyArray_DATA(out[1]), PyArray_DATA(out[2]),
                           PyArray_DATA(out[3]));
    IIS_END_ALLOW_THREADS
    if (st != IIS_OK) {
        raise_status(st, "e2e_objective");
        goto fail;
    }
    return Py_BuildValue("dNNNN", loss, out[0], out[1], out[2], out[3]);
fail:
    for (int i = 0; i < 4; i++) Py_XDECREF(out[i]);
    return NULL;
}

/* e2e_fit(elements, features, labels, n_classes, q, w, b, adam, *, k, temperature, l2, steps,
 *         step0, lr, beta1, beta2, eps, seed, n_threads=1, progress=None) -> loss history;
 * q, w, b and adam (the Adam moments) are updated in place */
static PyObject *py_e2e_fit(PyObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"elements", "features", "labels", "n_classes", "q", "w", "b", "adam",
                             "k", "temperature", "l2", "steps", "step0", "lr", "beta1", "beta2",
                             "eps", "seed", "n_threads", "progress", NULL};
    PyObject *oel, *of, *oy, *oq, *ow, *ob, *oad, *oprog = Py_None;
    PyArrayObject *el, *f, *y, *q, *w, *b, *ad, *hist;
    int K, k = -1, steps = 0, nt = 1, st, m;
    long long step0 = 0;
    unsigned long long seed = 0;
    double tau = NAN, l2 = 0.0;
    iis_e2e_params prm = {0};
    hook_state hs = {NULL, 0};
    iis_ctx ctx;
    (void)self;
    prm.lr = NAN; /* required */
    prm.beta1 = 0.9;
    prm.beta2 = 0.999;
    prm.eps = 1e-8;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOiOOOO|$iddiLddddKiO", kwlist, &oel, &of, &oy, &K,
                                     &oq, &ow, &ob, &oad, &k, &tau, &l2, &steps, &step0, &prm.lr,
                                     &prm.beta1, &prm.beta2, &prm.eps, &seed, &nt, &oprog))
        return NULL;
    {
        double lr = prm.lr, b1 = prm.beta1, b2 = prm.beta2, eps = prm.eps;
        if (e2e_args(oel, of, oy, K, oq, ow, ob, &el, &f, &y, &q, &w, &b) < 0) return NULL;
        m = (int)PyArray_DIM(q, 1);
        if (e2e_prm(&prm, k, m, tau, l2) < 0) return NULL;
        prm.lr = lr;
        prm.beta1 = b1;
        prm.beta2 = b2;
        prm.eps = eps;
    }
    if (!(ad = arr(oad, "adam", NPY_FLOAT64, 1, 0))) return NULL;
    if (PyArray_DIM(ad, 0) != 2 * (PyArray_SIZE(q) + PyArray_SIZE(w) + K)) {
        PyErr_SetString(PyExc_ValueError, "adam must hold 2 (E M + K M + K) moments");
        return NULL;
    }
    if (!PyArray_ISWRITEABLE(q) || !PyArray_ISWRITEABLE(w) || !PyArray_ISWRITEABLE(b) ||
        !PyArray_ISWRITEABLE(ad)) {
        PyErr_SetString(PyExc_ValueError, "q, W, b and adam are updated in place: they must be writeable");
        return NULL;
    }
    if (steps < 0 || step0 < 0 || !(prm.lr > 0.0) || !(prm.beta1 >= 0.0 && prm.beta1 < 1.0) ||
        !(prm.beta2 >= 0.0 && prm.beta2 < 1.0) || !(prm.eps >= 0.0)) {
        PyErr_SetString(PyExc_ValueError, "e2e_fit needs steps >= 0, step0 >= 0, lr > 0, 0 <= beta < 1, eps >= 0");
        return NULL;
    }
    if (oprog != Py_None && !PyCallable_Check(oprog)) {
        PyErr_SetString(PyExc_TypeError, "progress must be callable or None");
        return NULL;
    }
    prm.steps = steps;
    prm.step0 = (int64_t)step0;
    prm.seed = (uint64_t)seed;
    {
        npy_intp dh[1] = {steps};
        if (!(hist = (PyArrayObject *)PyArray_EMPTY(1, dh, NPY_FLOAT64, 0))) return NULL;
    }
    hs.progress = oprog != Py_None ? oprog : NULL;
    init_ctx(&ctx, &hs, nt, IIS_KERNELS_AUTO); /* BLAS only: no hardware-specific kernel */
    IIS_BEGIN_ALLOW_THREADS
    st = iis_e2e_fit(&ctx, PyArray_DATA(el), PyArray_DIM(el, 0), (int)PyArray_DIM(el, 1), PyArray_DATA(f),
                     PyArray_DIM(f, 0), PyArray_DATA(y), K, m, &prm, PyArray_DATA(q), PyArray_DATA(w),
                     PyArray_DATA(b), PyArray_DATA(ad), PyArray_DATA(hist));
    IIS_END_ALLOW_THREADS
    if (st != IIS_OK || hs.failed) {
        Py_DECREF(hist);
        return raise_status(st != IIS_OK ? st : IIS_EINTR, "e2e_fit");
    }
    return (PyObject *)hist;
}

/* e2e_noise(seed, step, n, m, n_threads=1) -> the Gumbel noise e2e_fit draws at that step */
static PyObject *py_e2e_noise(PyObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"seed", "step", "n", "m", "n_threads", NULL};
    unsigned long long seed;
    long long step;
    Py_ssize_t n;
    int m, nt = 1;
    PyArrayObject *g;
    iis_ctx ctx;
    hook_state hs = {NULL, 0};
    (void)self;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "KLni|i", kwlist, &seed, &step, &n, &m, &nt)) return NULL;
    if (n < 0 || m < 0 || step < 0) {
        PyErr_SetString(PyExc_ValueError, "e2e_noise needs n, m, step >= 0");
        return NULL;
    }
    {
        npy_intp dg[2] = {n, m};
        if (!(g = (PyArrayObject *)PyArray_EMPTY(2, dg, NPY_FLOAT64, 0))) return NULL;
    }
    init_ctx(&ctx, &hs, nt, IIS_KERNELS_AUTO); /* BLAS only: no hardware-specific kernel */
    iis_e2e_noise(&ctx, (uint64_t)seed, (int64_t)step, (int64_t)n, m, PyArray_DATA(g));
    return (PyObject *)g;
}
/* ==== end of End2End ======================================================= */

/* ==== InfoDisent (infodisent.c) ============================================ */
/* _set_lapack(dgesv, sgesv): the LAPACK solves of the BLAS table (InfoDisent's Cayley map) */
static PyObject *py_set_lapack(PyObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"dgesv", "sgesv", NULL};
    PyObject *cd, *cs;
    void *pd, *ps;
    (void)self;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OO", kwlist, &cd, &cs)) return NULL;
    if (!(pd = capsule_ptr(cd)) || !(ps = capsule_ptr(cs))) return NULL;
    g_blas.dgesv = (iis_dgesv_fn)pd;
    g_blas.sgesv = (iis_sgesv_fn)ps;
    Py_RETURN_NONE;
}

/* parametrization name -> 0 (cayley) / 1 (exp), -1 with a ValueError */
static int id_param(const char *p)
{
    if (strcmp(p, "cayley") == 0) return 0;
    if (strcmp(p, "exp") == 0) return 1;
    PyErr_Format(PyExc_ValueError, "parametrization must be 'cayley' or 'exp', got '%s'", p);
    return -1;
}

/* maps (n, hw, d) float32 with n, hw, d >= 1; x (d, d); -1 with an exception otherwise */
static int id_maps(PyObject *om, PyObject *ox, PyArrayObject **m, PyArrayObject **x)
{
    if (!(*m = arr(om, "maps", NPY_FLOAT32, 3, 0)) || !(*x = arr(ox, "X", NPY_FLOAT64, 2, 0))) return -1;
    if (PyArray_DIM(*m, 0) < 1 || PyArray_DIM(*m, 1) < 1 || PyArray_DIM(*m, 2) < 1 ||
        PyArray_DIM(*x, 0) != PyArray_DIM(*m, 2) || PyArray_DIM(*x, 1) != PyArray_DIM(*m, 2) ||
        PyArray_DIM(*m, 1) * PyArray_DIM(*m, 2) > 2147483647) {
        PyErr_SetString(PyExc_ValueError, "InfoDisent needs maps (n, hw, d) with n, hw, d >= 1 and X (d, d)");
        return -1;
    }
    return 0;
}

/* infodisent_rotation(X, *, parametrization, n_threads=1) -> U */
static PyObject *py_id_rotation(PyObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"X", "parametrization", "n_threads", NULL};
    PyObject *ox;
    const char *ps = "cayley";
    int nt = 1, st, param, d;
    PyArrayObject *x, *u;
    hook_state hs = {NULL, 0};
    iis_ctx ctx;
    (void)self;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O|$si", kwlist, &ox, &ps, &nt)) return NULL;
    if ((param = id_param(ps)) < 0 || !(x = arr(ox, "X", NPY_FLOAT64, 2, 0))) return NULL;
    d = (int)PyArray_DIM(x, 0);
    if (d < 1 || PyArray_DIM(x, 1) != d) {
        PyErr_SetString(PyExc_ValueError, "X must be square (d, d) with d >= 1");
        return NULL;
    }
    {
        npy_intp du[2] = {d, d};
        if (!(u = (PyArrayObject *)PyArray_EMPTY(2, du, NPY_FLOAT64, 0))) return NULL;
    }
    init_ctx(&ctx, &hs, nt, IIS_KERNELS_AUTO); /* BLAS only: no hardware-specific kernel */
    IIS_BEGIN_ALLOW_THREADS
    st = iis_infodisent_rotation(&ctx, PyArray_DATA(x), d, param, PyArray_DATA(u));
    IIS_END_ALLOW_THREADS
    if (st != IIS_OK) {
        Py_DECREF(u);
        return raise_status(st, "infodisent_rotation");
    }
    return (PyObject *)u;
}

/* infodisent_pool(maps, U, *, n_threads=1) -> (v, pmax, pmin) */
static PyObject *py_id_pool(PyObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"maps", "U", "n_threads", NULL};
    PyObject *om, *ou;
    int nt = 1, st;
    PyArrayObject *m, *u, *out[3] = {NULL, NULL, NULL};
    hook_state hs = {NULL, 0};
    iis_ctx ctx;
    (void)self;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OO|$i", kwlist, &om, &ou, &nt)) return NULL;
    if (id_maps(om, ou, &m, &u) < 0) return NULL;
    {
        npy_intp dv[2] = {PyArray_DIM(m, 0), PyArray_DIM(m, 2)};
        out[0] = (PyArrayObject *)PyArray_EMPTY(2, dv, NPY_FLOAT64, 0);
        out[1] = (PyArrayObject *)PyArray_EMPTY(2, dv, NPY_INT32, 0);
        out[2] = (PyArrayObject *)PyArray_EMPTY(2, dv, NPY_INT32, 0);
    }
    if (!out[0] || !out[1] || !out[2]) goto fail;
    init_ctx(&ctx, &hs, nt, IIS_KERNELS_AUTO); /* BLAS only: no hardware-specific kernel */
    IIS_BEGIN_ALLOW_THREADS
    st = iis_infodisent_pool(&ctx, PyArray_DATA(m), PyArray_DIM(m, 0), (int)PyArray_DIM(m, 1),
                             (int)PyArray_DIM(m, 2), PyArray_DATA(u), PyArray_DATA(out[0]),
                             PyArray_DATA(out[1]), PyArray_DATA(out[2]));
    IIS_END_ALLOW_THREADS
    if (st != IIS_OK) {
        raise_status(st, "infodisent_pool");
        goto fail;
    }
    return Py_BuildValue("NNN", out[0], out[1], out[2]);
fail:
    for (int i = 0; i < 3; i++) Py_XDECREF(out[i]);
    return NULL;
}

/* checked y (n), W (K, d), b (K) */
static int id_head(PyObject *oy, PyObject *ow, PyObject *ob, int64_t n, int d, int K, PyArrayObject **y,
                   PyArrayObject **w, PyArrayObject **b)
{
    if (!(*y = arr(oy, "labels", NPY_INT32, 1, 0)) || !(*w = arr(ow, "W", NPY_FLOAT64, 2, 0)) ||
        !(*b = arr(ob, "b", NPY_FLOAT64, 1, 0)))
        return -1;
    if (K < 2 || PyArray_DIM(*w, 0) != K || PyArray_DIM(*w, 1) != d || PyArray_DIM(*b, 0) != K) {
        PyErr_SetString(PyExc_ValueError, "InfoDisent needs W (K, d) and b (K) with K >= 2");
        return -1;
    }
    return check_labels(*y, n, K);
}

/* infodisent_objective(maps, labels, n_classes, X, W, b, *, parametrization, n_threads=1)
 * -> (loss, dX, dW, db) */
static PyObject *py_id_objective(PyObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"maps", "labels", "n_classes", "X", "W", "b", "parametrization", "n_threads", NULL};
    PyObject *om, *oy, *ox, *ow, *ob;
    const char *ps = "cayley";
    int K, nt = 1, st, param, d;
    double loss = 0.0;
    PyArrayObject *m, *y, *x, *w, *b, *out[3] = {NULL, NULL, NULL};
    hook_state hs = {NULL, 0};
    iis_ctx ctx;
    (void)self;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOiOOO|$si", kwlist, &om, &oy, &K, &ox, &ow, &ob, &ps, &nt))
        return NULL;
    if ((param = id_param(ps)) < 0 || id_maps(om, ox, &m, &x) < 0) return NULL;
    d = (int)PyArray_DIM(m, 2);
    if (id_head(oy, ow, ob, PyArray_DIM(m, 0), d, K, &y, &w, &b) < 0) return NULL;
    {
        npy_intp dx[2] = {d, d}, dw[2] = {K, d}, db[1] = {K};
        out[0] = (PyArrayObject *)PyArray_EMPTY(2, dx, NPY_FLOAT64, 0);
        out[1] = (PyArrayObject *)PyArray_EMPTY(2, dw, NPY_FLOAT64, 0);
        out[2] = (PyArrayObject *)PyArray_EMPTY(1, db, NPY_FLOAT64, 0);
    }
    if (!out[0] || !out[1] || !out[2]) goto fail;
    init_ctx(&ctx, &hs, nt, IIS_KERNELS_AUTO); /* BLAS only: no hardware-specific kernel */
    IIS_BEGIN_ALLOW_THREADS
    st = iis_infodisent_objective(&ctx, PyArray_DATA(m), PyArray_DIM(m, 0), (int)PyArray_DIM(m, 1), d,
                                  PyArray_DATA(y), K, param, PyArray_DATA(x), PyArray_DATA(w),
                                  PyArray_DATA(b), &loss, PyArray_DATA(out[0]), PyArray_DATA(out[1]),
                                  PyArray_DATA(out[2]));
    IIS_END_ALLOW_THREADS
    if (st != IIS_OK) {
        raise_status(st, "infodisent_objective");
        goto fail;
    }
    return Py_BuildValue("dNNN", loss, out[0], out[1], out[2]);
fail:
    for (int i = 0; i < 3; i++) Py_XDECREF(out[i]);
    return NULL;
}

/* infodisent_fit(maps, labels, n_classes, X, W, b, adam, *, parametrization, steps, step0, batch,
 *                lr, beta1, beta2, eps, seed, n_threads=1) -> loss history; X, W, b, adam in place */
static PyObject *py_id_fit(PyObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"maps", "labels", "n_classes", "X", "W", "b", "adam", "parametrization",
                             "steps", "step0", "batch", "lr", "beta1", "beta2", "eps", "seed",
                             "n_threads", NULL};
    PyObject *om, *oy, *ox, *ow, *ob, *oad;
    const char *ps = "cayley";
    int K, nt = 1, st, d;
    long long step0 = 0;
    unsigned long long seed = 0;
    PyArrayObject *m, *y, *x, *w, *b, *ad, *hist;
    iis_infodisent_params prm = {0};
    hook_state hs = {NULL, 0};
    iis_ctx ctx;
    (void)self;
    prm.lr = NAN; /* required */
    prm.beta1 = 0.9;
    prm.beta2 = 0.999;
    prm.eps = 1e-8;
    prm.batch = 64;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOiOOOO|$siLiddddKi", kwlist, &om, &oy, &K, &ox, &ow, &ob,
                                     &oad, &ps, &prm.steps, &step0, &prm.batch, &prm.lr, &prm.beta1,
                                     &prm.beta2, &prm.eps, &seed, &nt))
        return NULL;
    if ((prm.parametrization = id_param(ps)) < 0 || id_maps(om, ox, &m, &x) < 0) return NULL;
    d = (int)PyArray_DIM(m, 2);
    if (id_head(oy, ow, ob, PyArray_DIM(m, 0), d, K, &y, &w, &b) < 0) return NULL;
    if (!(ad = arr(oad, "adam", NPY_FLOAT64, 1, 0))) return NULL;
    if (PyArray_DIM(ad, 0) != 2 * ((npy_intp)d * d + (npy_intp)K * d + K)) {
        PyErr_SetString(PyExc_ValueError, "adam must hold 2 (d d + K d + K) moments");
        return NULL;
    }
    if (!PyArray_ISWRITEABLE(x) || !PyArray_ISWRITEABLE(w) || !PyArray_ISWRITEABLE(b) ||
        !PyArray_ISWRITEABLE(ad)) {
        PyErr_SetString(PyExc_ValueError, "X, W, b and adam are updated in place: they must be writeable");
        return NULL;
    }
    if (prm.steps < 0 || step0 < 0 || prm.batch < 1 || !(prm.lr > 0.0) || !(prm.beta1 >= 0.0 && prm.beta1 < 1.0) ||
        !(prm.beta2 >= 0.0 && prm.beta2 < 1.0) || !(prm.eps >= 0.0)) {
        PyErr_SetString(PyExc_ValueError, "infodisent_fit needs steps >= 0, step0 >= 0, batch >= 1, lr > 0, "
                                          "0 <= beta < 1, eps >= 0");
        return NULL;
    }
    prm.step0 = (int64_t)step0;
    prm.seed = (uint64_t)seed;
    {
        npy_intp dh[1] = {prm.steps};
        if (!(hist = (PyArrayObject *)PyArray_EMPTY(1, dh, NPY_FLOAT64, 0))) return NULL;
    }
    init_ctx(&ctx, &hs, nt, IIS_KERNELS_AUTO); /* BLAS only: no hardware-specific kernel */
    IIS_BEGIN_ALLOW_THREADS
    st = iis_infodisent_fit(&ctx, PyArray_DATA(m), PyArray_DIM(m, 0), (int)PyArray_DIM(m, 1), d,
                            PyArray_DATA(y), K, &prm, PyArray_DATA(x), PyArray_DATA(w), PyArray_DATA(b),
                            PyArray_DATA(ad), PyArray_DATA(hist));
    IIS_END_ALLOW_THREADS
    if (st != IIS_OK || hs.failed) {
        Py_DECREF(hist);
        return raise_status(st != IIS_OK ? st : IIS_EINTR, "infodisent_fit");
    }
    return (PyObject *)hist;
}
/* ==== end of InfoDisent ==================================================== */
/* ==== sparse heads: multinomial elastic net, sparse.c ==================== */

/* a writable C-contiguous float64 array of shape (r, c) (c < 0: 1-D of r); NULL with an error */
static PyArrayObject *enet_out(PyObject *o, const char *name, npy_intp r, npy_intp c)
{
    PyArrayObject *a = arr(o, name, NPY_FLOAT64, c < 0 ? 1 : 2, 0);
    if (!a) return NULL;
    if (PyArray_DIM(a, 0) != r || (c >= 0 && PyArray_DIM(a, 1) != c)) {
        PyErr_Format(PyExc_ValueError, "%s has the wrong shape", name);
        return NULL;
    }
    if (!PyArray_ISWRITEABLE(a)) {
        PyErr_Format(PyExc_ValueError, "%s must be writeable", name);
        return NULL;
    }
    return a;
}

/* X (n x d, float64, contiguous rows) and y (n, int32 in [0, K)); -1 with an error */
static int enet_inputs(PyObject *ox, PyObject *oy, int K, PyArrayObject **x, PyArrayObject **y)
{
    if (!(*x = arr(ox, "X", NPY_FLOAT64, 2, 1))) return -1;
    if (PyArray_DIM(*x, 1) > INT_MAX - 1) {
        PyErr_SetString(PyExc_ValueError, "X has too many columns");
        return -1;
    }
    if (!(*y = arr(oy, "y", NPY_INT32, 1, 0)) || check_labels(*y, PyArray_DIM(*x, 0), K) < 0)
        return -1;
    return 0;
}

static const char *enet_objective_kw[] = {"X", "y", "n_classes", "W", "b", "n_threads", NULL};

/* enet_objective(X, y, n_classes, W, b, n_threads=0) -> (mean CE, dW, db) */
static PyObject *py_enet_objective(PyObject *self, PyObject *args, PyObject *kw)
{
    PyObject *ox, *oy, *ow, *ob;
    PyArrayObject *x, *y, *w, *b, *gw = NULL, *gb = NULL;
    int K, nt = 0, st;
    double loss = 0;
    hook_state hs = {NULL, 0};
    iis_ctx ctx;
    npy_intp dims[2];
    (void)self;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOiOO|i", (char **)enet_objective_kw, &ox, &oy, &K,
                                     &ow, &ob, &nt))
        return NULL;
    if (enet_inputs(ox, oy, K, &x, &y) < 0) return NULL;
    if (!(w = arr(ow, "W", NPY_FLOAT64, 2, 0)) || !(b = arr(ob, "b", NPY_FLOAT64, 1, 0))) return NULL;
    if (PyArray_DIM(w, 0) != PyArray_DIM(x, 1) || PyArray_DIM(w, 1) != K || PyArray_DIM(b, 0) != K) {
        PyErr_SetString(PyExc_ValueError, "W must be (d, n_classes) and b (n_classes,)");
        return NULL;
    }
    dims[0] = PyArray_DIM(x, 1), dims[1] = K;
    gw = (PyArrayObject *)PyArray_ZEROS(2, dims, NPY_FLOAT64, 0);
    gb = (PyArrayObject *)PyArray_ZEROS(1, dims + 1, NPY_FLOAT64, 0);
    if (!gw || !gb) goto fail;
    init_ctx(&ctx, &hs, nt, IIS_KERNELS_AUTO); /* BLAS only: no hardware-specific kernel */
    IIS_BEGIN_ALLOW_THREADS
    st = iis_enet_objective_d(&ctx, PyArray_DATA(x), PyArray_DIM(x, 0), (int)PyArray_DIM(x, 1),
                              row_ld(x), PyArray_DATA(y), K, PyArray_DATA(w), PyArray_DATA(b), &loss,
                              PyArray_DATA(gw), PyArray_DATA(gb));
    IIS_END_ALLOW_THREADS
    if (st != IIS_OK) {
        raise_status(st, "enet_objective");
        goto fail;
    }
    return Py_BuildValue("dNN", loss, gw, gb);
fail:
    Py_XDECREF(gw);
    Py_XDECREF(gb);
    return NULL;
}

static const char *enet_fit_kw[] = {"X", "y", "n_classes", "W", "b", "grad", "grad_b", "lam",
                                    "lam_prev", "alpha", "grouped", "tol", "max_iter", "n_threads",
                                    NULL};

/* enet_fit(X, y, n_classes, W, b, grad, grad_b, lam, lam_prev, alpha, grouped, tol, max_iter,
 *          n_threads=0) -> dict: one point of the path, W, b, grad, grad_b updated
 * in place (see iis_enet_fit_d) */
static PyObject *py_enet_fit(PyObject *self, PyObject *args, PyObject *kw)
{
    PyObject *ox, *oy, *ow, *ob, *og, *ogb;
    PyArrayObject *x, *y, *w, *b, *g, *gb;
    iis_enet_params p;
    iis_enet_info info;
    int K, nt = 0, st;
    hook_state hs = {NULL, 0};
    iis_ctx ctx;
    (void)self;
    memset(&p, 0, sizeof(p));
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOiOOOOdddpdi|i", (char **)enet_fit_kw, &ox, &oy,
                                     &K, &ow, &ob, &og, &ogb, &p.lambda, &p.lambda_prev, &p.alpha,
                                     &p.grouped, &p.tol, &p.max_iter, &nt))
        return NULL;
    if (enet_inputs(ox, oy, K, &x, &y) < 0) return NULL;
    if (!(w = enet_out(ow, "W", PyArray_DIM(x, 1), K)) || !(b = enet_out(ob, "b", K, -1)) ||
        !(g = enet_out(og, "grad", PyArray_DIM(x, 1), K)) || !(gb = enet_out(ogb, "grad_b", K, -1)))
        return NULL;
    if (!(p.lambda >= 0) || !(p.lambda_prev >= p.lambda) || !(p.alpha > 0 && p.alpha <= 1) ||
        !(p.tol > 0) || p.max_iter < 0 || !isfinite(p.lambda_prev)) {
        PyErr_SetString(PyExc_ValueError, "need lam >= 0, lam_prev >= lam, 0 < alpha <= 1, tol > 0 "
                        "and max_iter >= 0, all finite");
        return NULL;
    }
    if (arrays_overlap(w, x) || arrays_overlap(b, x) || arrays_overlap(g, x) || arrays_overlap(w, g) ||
        arrays_overlap(gb, b)) {
        PyErr_SetString(PyExc_ValueError, "W, b, grad and grad_b must not share memory with X or each other");
        return NULL;
    }
    init_ctx(&ctx, &hs, nt, IIS_KERNELS_AUTO); /* BLAS only: no hardware-specific kernel */
    IIS_BEGIN_ALLOW_THREADS
    st = iis_enet_fit_d(&ctx, PyArray_DATA(x), PyArray_DIM(x, 0), (int)PyArray_DIM(x, 1), row_ld(x),
                        PyArray_DATA(y), K, &p, PyArray_DATA(w), PyArray_DATA(b), PyArray_DATA(g),
                        PyArray_DATA(gb), &info);
    IIS_END_ALLOW_THREADS
    if (st != IIS_OK) return raise_status(st, "enet_fit");
    return Py_BuildValue("{s:i,s:i,s:d,s:d,s:i,s:i}", "n_iter", info.n_iter, "converged",
                         info.converged, "kkt", info.kkt, "loss", info.loss, "n_screened",
                         info.n_screened, "n_added", info.n_added);
}

/* ==== end of the sparse heads' block ================================================== */

/* a method table entry's function and flags for a function taking keyword arguments */
#define KW(fn) (PyCFunction)(void (*)(void))(fn), METH_VARARGS | METH_KEYWORDS

static PyMethodDef methods[] = {
    {"_set_blas", py_set_blas, METH_VARARGS,
     "Fill the BLAS table from PyCapsules: sgemm, dgemm[, ssyrk, dsyrk, dtrsm, dpotrf]."},
    {"project", KW(py_project),
     "project(features, concepts, norm=0, mean=None, std=None, n_threads=1, check=False, kernels='auto') -> A, or (A, max|F|) with check"},
    {"colstats", KW(py_colstats),
     "colstats(activations, n_threads=1, kernels='auto') -> (mean, std)"},
    {"topk", KW(py_topk),
     "topk(activations, k, soft=False, dense=False, n_threads=1, kernels='auto') -> (idx, val) | masked"},
    {"keep_count", KW(py_keep_count),
     "keep_count(m, s, published=False) -> k"},
    {"logreg_fit", KW(py_logreg_fit),
     "logreg_fit(X, idx=None, val=None, d=0, y, n_classes, l2, tol, max_iter, w0=None, b0=None, mu=None, sigma=None, n_threads=1, precondition=1, start_logits=None, kernels='auto', progress=None) -> (W, b, n_iter, converged, loss, grad_max, stop); stop: 0 converged (max|grad| <= tol), 1 max_iter, 2 line search, 3 relative decrease, 4 non-finite; progress(kind, stage, iter, loss, grad_max, kept, stop, accuracy) after each iteration (kind 0)"},
    {"logreg_predict", KW(py_logreg_predict),
     "logreg_predict(X, idx=None, val=None, d=0, w, b, mu=None, sigma=None, n_threads=1, kernels='auto') -> (logits, pred)"},
    {"logreg_objective", KW(py_logreg_objective),
     "logreg_objective(X, idx=None, val=None, d=0, y, n_classes, l2, w, b, mu=None, sigma=None, amx=0, n_threads=1, kernels='auto') -> (f, grad)"},
    {"logreg_precond", KW(py_logreg_precond),
     "logreg_precond(X, mu=None, sigma=None, l2, n_threads=1, amx=False, kernels='auto') -> P (the solver's preconditioner matrix)"},
    {"path", KW(py_path),
     "path(atr, ytr, aev, yev, n_classes, sparsities, soft=False, published=False, l2, tol, max_iter, n_threads=1, progress=None, overwrite=False, precondition=1, train_logits0=None, kernels='auto') -> (accuracy, kept, n_iter, converged, stop); progress(kind, stage, iter, loss, grad_max, kept, stop, accuracy): kind 1 before ratio `stage`, 0 after each of its iterations, 2 after its evaluation"},
    {"kmeans", KW(py_kmeans),
     "kmeans(X, k, seed=0, max_iter=300, tol=1e-4, n_threads=1, kernels='auto') -> (centers, labels, inertia, n_iter)"},
    {"trapezoid", KW(py_trapezoid),
     "trapezoid(s, arr) -> IIS"},
    {"accuracy", KW(py_accuracy),
     "accuracy(pred, y) -> float"},
    {"config", KW(py_config),
     "config(kernels='auto') -> dict: OpenMP/BLAS/SIMD/AMX facts of this build and the kernels chosen under kernels"},
    {"text_objective", KW(py_text_objective),
     "text_objective(features, targets, w, n_threads=1, kernels='auto') -> (sim, J, dJ/dW)"},
    {"text_fit", KW(py_text_fit),
     "text_fit(f_train, t_train, f_val, t_val, n_concepts, steps, w0=None, eval_every=1, patience=1, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, seed=0, n_threads=1, progress=None, kernels='auto') -> (W, val_sim, train_history, val_history, val_steps, n_steps, best_step, best_val, n_evals)"},
    /* ---- End2End (end2end.c) ---- */
    {"e2e_objective", (PyCFunction)(void (*)(void))py_e2e_objective, METH_VARARGS | METH_KEYWORDS,
     "e2e_objective(elements, features, labels, n_classes, q, w, b, *, k, temperature, l2=0, "
     "noise=None, a_given=None, n_threads=1) -> (loss, dq, dW, db, dA)"},
    {"e2e_fit", (PyCFunction)(void (*)(void))py_e2e_fit, METH_VARARGS | METH_KEYWORDS,
     "e2e_fit(elements, features, labels, n_classes, q, w, b, adam, *, k, temperature, l2, steps, "
     "step0, lr, beta1, beta2, eps, seed, n_threads=1, progress=None) -> loss history"},
    {"e2e_noise", (PyCFunction)(void (*)(void))py_e2e_noise, METH_VARARGS | METH_KEYWORDS,
     "e2e_noise(seed, step, n, m, n_threads=1) -> Gumbel noise (n, m)"},
    /* ---- InfoDisent (infodisent.c) ---- */
    {"_set_lapack", KW(py_set_lapack),
     "_set_lapack(dgesv, sgesv): the LAPACK gesv capsules of the BLAS table"},
    {"infodisent_rotation", KW(py_id_rotation),
     "infodisent_rotation(X, *, parametrization='cayley', n_threads=1) -> U"},
    {"infodisent_pool", KW(py_id_pool),
     "infodisent_pool(maps, U, *, n_threads=1) -> (v, pmax, pmin)"},
    {"infodisent_objective", KW(py_id_objective),
     "infodisent_objective(maps, labels, n_classes, X, W, b, *, parametrization='cayley', n_threads=1) "
     "-> (loss, dX, dW, db)"},
    {"infodisent_fit", KW(py_id_fit),
     "infodisent_fit(maps, labels, n_classes, X, W, b, adam, *, parametrization, steps, step0, batch, lr, "
     "beta1, beta2, eps, seed, n_threads=1) -> loss history"},
    /* ---- sparse heads (sparse.c) ---- */
    {"enet_objective", KW(py_enet_objective),
     "enet_objective(X, y, n_classes, W, b, n_threads=0) -> (mean CE, dW, db)"},
    {"enet_fit", KW(py_enet_fit),
     "enet_fit(X, y, n_classes, W, b, grad, grad_b, lam, lam_prev, alpha, grouped, tol, max_iter, "
     "n_threads=0) -> info dict; one point of the elastic-net path (W, b, grad, grad_b "
     "updated in place)"},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef moduledef = {PyModuleDef_HEAD_INIT, "_core",
                                       "C kernels of iis (projection, masks, solver, k-means, IIS).",
                                       -1, methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__core(void)
{
    import_array();
    return PyModule_Create(&moduledef);
}

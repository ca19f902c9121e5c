/*
 * koala.i - the SWIG interface of libkoala for Python: the module
 * `koala.capi` (extension `koala._capi`), a one-to-one view of koala.h.
 *
 * The typemaps here only convert: Python objects to pointers and sizes,
 * statuses to exceptions, out-parameters to return values, a Python callable
 * to the C all-reduce callback. There is no arithmetic and no knowledge of
 * tensor layouts; the pythonic layer in koala/optimizer.py checks sizes and
 * dtypes of the tensors before it calls in here.
 *
 * Conventions a caller of koala.capi sees:
 *  - a koala_status other than KOALA_OK raises koala.errors.KoalaError (the
 *    subclass for that status) carrying .status and koala_last_error();
 *    KOALA_OK returns None (or the out-parameters, see below);
 *  - an array of tensors (params, grads, the out of koala_posterior, the
 *    buffers of caller-owned state) is a sequence whose items are
 *      * an object with the buffer protocol (NumPy array, ...): host memory,
 *        C-contiguous, float32 ('f'), float64 ('d'), float16 ('e') or 16-bit
 *        raw storage ('H'/'h', e.g. bfloat16 bits), writable where the
 *        library writes; all items of one call have the same item size;
 *      * an int: a raw address (torch's data_ptr(), CuPy's data.ptr, ...),
 *        host or device, passed through unchecked (only a negative int is
 *        refused, with OverflowError);
 *      * None: NULL (grads only: "no gradient this step");
 *    params itself may be None (koala_predict of KOALA_VANILLA/KOALA_PLUSPLUS);
 *  - stream is None (NULL) or an int (a cudaStream_t address);
 *  - a float64 block (the sums of the two-phase update, the scalars of
 *    caller-owned state) is a float64 buffer at least as long as the library
 *    needs (koala_sums_size / koala_state_layout: checked), or an int address;
 *  - per-tensor values (koala_set_tensor_lr / koala_set_tensor_weight_decay)
 *    are None or a sequence of exactly n_global numbers (checked);
 *  - out-parameters are returned: koala_create / koala_create_sharded ->
 *    handle, koala_get_info -> dict, koala_state_size / koala_sums_size ->
 *    int, koala_state_layout -> (buffers_per_tensor, state_dtype,
 *    scalar_count);
 *  - koala_config_init(cfg, method) is what the header's macro is: the sized
 *    initialiser with this module's sizeof(koala_config);
 *  - koala_create_sharded(cfg, sizes, n_global, global_index,
 *    global_elements, allreduce, dtype, memory): global_index is None or a
 *    sequence of ints; allreduce is None or a callable
 *    allreduce(buf, count, stream) that sums the count doubles of buf in
 *    place over the processes (buf: a writable float64 memoryview for a host
 *    optimizer, an int device address for a device one; stream None or an
 *    int) and returns None or 0. It runs with the GIL held. A non-zero int
 *    or an exception makes the koala call raise koala.CommunicationError,
 *    with the callback's exception as its __cause__. The module keeps the
 *    callable alive until koala_destroy;
 *  - koala_bind_state keeps the buffer views it was given alive until the
 *    next koala_bind_state or koala_destroy of that optimizer (int addresses
 *    are the caller's to keep valid).
 */
%module(package="koala", threads="1") capi

%{
#define SWIG_FILE_WITH_INIT
#include <string.h>
#include "koala.h"

/* The exception an all-reduce callback raised, per thread, until the
 * status of the koala call that ran it is turned into an exception (the
 * callback runs in the calling thread, while the GIL is released around the
 * koala call, so another thread's call may run callbacks meanwhile). */
static Py_tss_t koala_py_cause_key = Py_tss_NEEDS_INIT;

static void koala_py_set_cause(PyObject *exc) { /* steals exc */
    PyObject *old;
    if (!PyThread_tss_is_created(&koala_py_cause_key) &&
        PyThread_tss_create(&koala_py_cause_key) != 0) {
        Py_XDECREF(exc);
        return;
    }
    old = (PyObject *)PyThread_tss_get(&koala_py_cause_key);
    Py_XDECREF(old);
    PyThread_tss_set(&koala_py_cause_key, exc);
}

static PyObject *koala_py_take_cause(void) { /* new reference or NULL */
    PyObject *exc;
    if (!PyThread_tss_is_created(&koala_py_cause_key)) return NULL;
    exc = (PyObject *)PyThread_tss_get(&koala_py_cause_key);
    PyThread_tss_set(&koala_py_cause_key, NULL);
    return exc;
}

/* Raises the koala.errors exception for `st` with the library's message.
 * The exception classes live in Python (koala/errors.py) so that the
 * pythonic layer can catch them by type; if that module cannot be
 * imported, a RuntimeError carries the same text. A KOALA_ERROR_COMMUNICATION
 * gets the callback's exception (if it raised one) as its __cause__. */
static void koala_py_raise(koala_status st) {
    const char *msg = koala_last_error();
    PyObject *cause = koala_py_take_cause();
    PyObject *mod = PyImport_ImportModule("koala.errors");
    if (mod) {
        PyObject *exc = PyObject_CallMethod(mod, "from_status", "is", (int)st, msg);
        Py_DECREF(mod);
        if (exc) {
            if (cause && st == KOALA_ERROR_COMMUNICATION) {
                Py_INCREF(cause);
                PyException_SetContext(exc, cause);
                PyException_SetCause(exc, cause); /* steals */
                cause = NULL;
            }
            PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
            Py_DECREF(exc);
            Py_XDECREF(cause);
            return;
        }
    }
    PyErr_Clear();
    Py_XDECREF(cause);
    PyErr_Format(PyExc_RuntimeError, "%s (%s)", msg, koala_status_string(st));
}

/* One argument that is an array of tensor pointers, plus the buffers held
 * for the duration of the call. */
typedef struct {
    Py_ssize_t n;
    void **ptrs;
    Py_buffer *views;
    char *held; /* held[i]: views[i] must be released */
} koala_py_ptrs;
/* Typemap locals start empty so that freearg is safe when an earlier
 * argument failed before this one was converted. */
#define KOALA_PY_PTRS_EMPTY {0, NULL, NULL, NULL}

/* An int address: a non-negative int that fits a pointer (negative ones raise
 * OverflowError instead of becoming huge addresses). */
static void *koala_py_address(PyObject *obj) {
    unsigned long long v = PyLong_AsUnsignedLongLong(obj);
    if (PyErr_Occurred()) return NULL;
    if (sizeof(void *) < sizeof v && v > (unsigned long long)(size_t)-1) {
        PyErr_SetString(PyExc_OverflowError, "address does not fit a pointer");
        return NULL;
    }
    return (void *)(size_t)v;
}

static const char *koala_py_format(const Py_buffer *v) {
    const char *f = v->format ? v->format : "B";
    if (f[0] == '<' || f[0] == '=' || f[0] == '@') ++f;
    return f;
}

/* float32, float64 (scalars and tensors) */
static int koala_py_float_ok(const Py_buffer *v) {
    const char *f = koala_py_format(v);
    return (strcmp(f, "f") == 0 && v->itemsize == 4) || (strcmp(f, "d") == 0 && v->itemsize == 8);
}

/* tensors: float32, float64, float16 and 16-bit raw storage (bfloat16 bits) */
static int koala_py_format_ok(const Py_buffer *v) {
    const char *f = koala_py_format(v);
    return koala_py_float_ok(v) ||
           ((strcmp(f, "e") == 0 || strcmp(f, "H") == 0 || strcmp(f, "h") == 0) &&
            v->itemsize == 2);
}

static int koala_py_double_ok(const Py_buffer *v) {
    return strcmp(koala_py_format(v), "d") == 0 && v->itemsize == 8;
}

static void koala_py_ptrs_release(koala_py_ptrs *p) {
    Py_ssize_t i;
    for (i = 0; i < p->n; ++i)
        if (p->held && p->held[i]) PyBuffer_Release(&p->views[i]);
    PyMem_Free(p->ptrs);
    PyMem_Free(p->views);
    PyMem_Free(p->held);
    p->ptrs = NULL;
    p->views = NULL;
    p->held = NULL;
    p->n = 0;
}

/* Converts `seq` (see the conventions above) into p->ptrs. Returns 0 and
 * sets a Python exception on failure, with p left releasable. */
static int koala_py_ptrs_from(PyObject *seq, const char *name, int writable, int allow_none,
                              koala_py_ptrs *p) {
    PyObject *fast;
    Py_ssize_t i, n;
    Py_ssize_t first_itemsize = 0;
    const char *first_format = NULL;
    p->n = 0;
    p->ptrs = NULL;
    p->views = NULL;
    p->held = NULL;
    fast = PySequence_Fast(seq, "");
    if (!fast) {
        PyErr_Format(PyExc_TypeError, "%s must be a sequence of arrays or addresses, not %.80s",
                     name, Py_TYPE(seq)->tp_name);
        return 0;
    }
    n = PySequence_Fast_GET_SIZE(fast);
    p->ptrs = (void **)PyMem_Calloc(n ? (size_t)n : 1, sizeof(void *));
    p->views = (Py_buffer *)PyMem_Calloc(n ? (size_t)n : 1, sizeof(Py_buffer));
    p->held = (char *)PyMem_Calloc(n ? (size_t)n : 1, 1);
    if (!p->ptrs || !p->views || !p->held) {
        Py_DECREF(fast);
        PyErr_NoMemory();
        return 0;
    }
    p->n = n;
    for (i = 0; i < n; ++i) {
        PyObject *item = PySequence_Fast_GET_ITEM(fast, i);
        if (item == Py_None) {
            if (!allow_none) {
                PyErr_Format(PyExc_TypeError, "%s[%zd] is None", name, i);
                goto fail;
            }
            p->ptrs[i] = NULL;
        } else if (PyLong_Check(item)) {
            p->ptrs[i] = koala_py_address(item);
            if (PyErr_Occurred()) goto fail;
        } else if (PyObject_CheckBuffer(item)) {
            Py_buffer *v = &p->views[i];
            int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0);
            if (PyObject_GetBuffer(item, v, flags) != 0) {
                PyErr_Clear();
                PyErr_Format(PyExc_ValueError, "%s[%zd] must be a C-contiguous%s buffer", name, i,
                             writable ? ", writable" : "");
                goto fail;
            }
            p->held[i] = 1;
            if (!koala_py_format_ok(v)) {
                PyErr_Format(PyExc_TypeError,
                             "%s[%zd] has format '%s' (itemsize %zd); expected float32 ('f'), "
                             "float64 ('d'), float16 ('e') or 16-bit raw storage ('H')",
                             name, i, v->format ? v->format : "B", v->itemsize);
                goto fail;
            }
            if (!first_format) {
                first_format = v->format;
                first_itemsize = v->itemsize;
            } else if (v->itemsize != first_itemsize) {
                PyErr_Format(PyExc_TypeError, "%s[%zd] has itemsize %zd but %s[0] has %zd", name,
                             i, v->itemsize, name, first_itemsize);
                goto fail;
            }
            p->ptrs[i] = v->buf;
        } else {
            PyErr_Format(PyExc_TypeError,
                         "%s[%zd] is a %.80s; expected a buffer (NumPy array), an int address "
                         "or None",
                         name, i, Py_TYPE(item)->tp_name);
            goto fail;
        }
    }
    Py_DECREF(fast);
    return 1;
fail:
    Py_DECREF(fast);
    return 0;
}

/* One scalar in memory (koala_update_ptr's loss / loss_var): an int address
 * or a buffer whose first bytes hold the value. */
static int koala_py_scalar_from(PyObject *obj, const char *name, Py_buffer *view, int *held,
                                const void **out) {
    *held = 0;
    if (PyLong_Check(obj)) {
        *out = koala_py_address(obj);
        return !PyErr_Occurred();
    }
    if (PyObject_CheckBuffer(obj)) {
        if (PyObject_GetBuffer(obj, view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) != 0) return 0;
        *held = 1;
        if (!koala_py_float_ok(view) || view->len < view->itemsize) {
            PyErr_Format(PyExc_TypeError, "%s must hold a float32 or float64 scalar", name);
            return 0;
        }
        *out = view->buf;
        return 1;
    }
    PyErr_Format(PyExc_TypeError, "%s must be an int address or a buffer, not %.80s", name,
                 Py_TYPE(obj)->tp_name);
    return 0;
}
/* ---- what the module keeps per optimizer -------------------------------- */
/* Every handle made by this module's koala_create / koala_create_sharded
 * has one record, released by koala_destroy: what the typemaps need to
 * check lengths (n_global), the all-reduce callable (the `user` of the C
 * callback) and the buffer views koala_bind_state keeps. Used with the GIL
 * held only. */
typedef struct koala_py_extra {
    koala_optimizer *opt;
    struct koala_py_extra *next;
    size_t n_global;
    int device;            /* KOALA_DEVICE: the callback gets an address, not a view */
    PyObject *allreduce;   /* strong reference or NULL */
    koala_py_ptrs bound;   /* views held for koala_bind_state */
    Py_buffer scalars_view;
    int scalars_held;
} koala_py_extra;

static koala_py_extra *koala_py_extras = NULL;

static koala_py_extra *koala_py_extra_new(size_t n_global, koala_memory memory,
                                          PyObject *allreduce) {
    koala_py_extra *e = (koala_py_extra *)PyMem_Calloc(1, sizeof *e);
    if (!e) {
        PyErr_NoMemory();
        return NULL;
    }
    e->n_global = n_global;
    e->device = memory == KOALA_DEVICE;
    if (allreduce && allreduce != Py_None) {
        Py_INCREF(allreduce);
        e->allreduce = allreduce;
    }
    return e;
}

static void koala_py_extra_release_bound(koala_py_extra *e) {
    koala_py_ptrs_release(&e->bound);
    if (e->scalars_held) PyBuffer_Release(&e->scalars_view);
    e->scalars_held = 0;
}

static void koala_py_extra_free(koala_py_extra *e) {
    if (!e) return;
    koala_py_extra_release_bound(e);
    Py_XDECREF(e->allreduce);
    PyMem_Free(e);
}

static void koala_py_extra_link(koala_py_extra *e, koala_optimizer *opt) {
    e->opt = opt;
    e->next = koala_py_extras;
    koala_py_extras = e;
}

static koala_py_extra *koala_py_extra_find(const koala_optimizer *opt) {
    koala_py_extra *e;
    for (e = koala_py_extras; e; e = e->next)
        if (e->opt == opt) return e;
    return NULL;
}

static void koala_py_extra_drop(const koala_optimizer *opt) {
    koala_py_extra **link = &koala_py_extras;
    while (*link) {
        if ((*link)->opt == opt) {
            koala_py_extra *e = *link;
            *link = e->next;
            koala_py_extra_free(e);
            return;
        }
        link = &(*link)->next;
    }
}

/* ---- the all-reduce callback -------------------------------------------- */
/* The C koala_allreduce_fn of every sharded optimizer made here: calls the
 * record's Python callable with the GIL held. An exception is kept (see
 * koala_py_set_cause) and reported as a non-zero return. */
static int koala_py_allreduce(double *buf, size_t count, void *stream, void *user) {
    koala_py_extra *e = (koala_py_extra *)user;
    PyGILState_STATE gil = PyGILState_Ensure();
    PyObject *raw = NULL, *view = NULL, *py_stream = NULL, *result = NULL;
    int rc = 0;
    if (!e->allreduce) {
        PyErr_SetString(PyExc_RuntimeError, "no all-reduce callable");
        goto fail;
    }
    if (e->device) {
        view = PyLong_FromVoidPtr(buf);
    } else {
        raw = PyMemoryView_FromMemory((char *)buf, (Py_ssize_t)(count * sizeof(double)),
                                      PyBUF_WRITE);
        if (raw) view = PyObject_CallMethod(raw, "cast", "s", "d");
    }
    if (!view) goto fail;
    if (stream) {
        py_stream = PyLong_FromVoidPtr(stream);
    } else {
        py_stream = Py_None;
        Py_INCREF(py_stream);
    }
    if (!py_stream) goto fail;
    result = PyObject_CallFunction(e->allreduce, "OnO", view, (Py_ssize_t)count, py_stream);
    if (!result) goto fail;
    if (result == Py_None) {
        rc = 0;
    } else if (PyLong_Check(result)) {
        rc = (int)PyLong_AsLong(result);
        if (PyErr_Occurred()) goto fail;
    } else {
        PyErr_Format(PyExc_TypeError,
                     "the all-reduce callable returned a %.80s; expected None or an int "
                     "(0 = success)",
                     Py_TYPE(result)->tp_name);
        goto fail;
    }
    goto done;
fail:
    rc = -1;
    {
        PyObject *type, *value, *tb;
        PyErr_Fetch(&type, &value, &tb);
        PyErr_NormalizeException(&type, &value, &tb);
        if (value && tb) PyException_SetTraceback(value, tb);
        Py_XDECREF(type);
        Py_XDECREF(tb);
        koala_py_set_cause(value);
    }
done:
    /* The views die with the call: the buffer is the library's. A view the
     * callable kept an export of stays, and is then simply not released. */
    if (view && !e->device) {
        PyObject *r = PyObject_CallMethod(view, "release", NULL);
        if (!r) PyErr_Clear();
        Py_XDECREF(r);
    }
    if (raw) {
        PyObject *r = PyObject_CallMethod(raw, "release", NULL);
        if (!r) PyErr_Clear();
        Py_XDECREF(r);
    }
    Py_XDECREF(view);
    Py_XDECREF(raw);
    Py_XDECREF(py_stream);
    Py_XDECREF(result);
    PyGILState_Release(gil);
    return rc;
}

/* ---- float64 blocks: sums, scalars -------------------------------------- */
/* An int address, or a float64 buffer of at least `need` doubles (writable
 * if asked). Returns 0 with a Python exception set on failure. */
static int koala_py_doubles_from(PyObject *obj, const char *name, size_t need, int writable,
                                 Py_buffer *view, int *held, double **out) {
    *held = 0;
    if (PyLong_Check(obj)) {
        *out = (double *)koala_py_address(obj);
        return !PyErr_Occurred();
    }
    if (!PyObject_CheckBuffer(obj) ||
        PyObject_GetBuffer(obj, view,
                           PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0)) != 0) {
        PyErr_Clear();
        PyErr_Format(PyExc_TypeError,
                     "%s must be a C-contiguous%s float64 buffer or an int address, not %.80s",
                     name, writable ? ", writable" : "", Py_TYPE(obj)->tp_name);
        return 0;
    }
    *held = 1;
    if (!koala_py_double_ok(view)) {
        PyErr_Format(PyExc_TypeError, "%s has format '%s'; expected float64 ('d')", name,
                     view->format ? view->format : "B");
        return 0;
    }
    if ((size_t)view->len < need * sizeof(double)) {
        PyErr_Format(PyExc_ValueError, "%s holds %zd doubles; this optimizer needs %zu", name,
                     view->len / (Py_ssize_t)sizeof(double), need);
        return 0;
    }
    *out = (double *)view->buf;
    return 1;
}

/* Doubles the scalar block of `opt` has (0 if the handle cannot tell). */
static size_t koala_py_scalar_count(const koala_optimizer *opt) {
    size_t n = 0;
    if (koala_state_layout(opt, NULL, NULL, &n) != KOALA_OK) return 0;
    return n;
}

static size_t koala_py_sums_count(const koala_optimizer *opt) {
    size_t n = 0;
    if (koala_sums_size(opt, &n) != KOALA_OK) return 0;
    return n;
}

/* Per-tensor values: None (NULL) or exactly n_global numbers into *out
 * (PyMem_Malloc'ed). */
static int koala_py_values_from(PyObject *obj, const char *name, const koala_optimizer *opt,
                                double **out) {
    PyObject *fast;
    Py_ssize_t i, n;
    koala_py_extra *e = koala_py_extra_find(opt);
    *out = NULL;
    if (obj == Py_None) return 1;
    fast = PySequence_Fast(obj, "");
    if (!fast) {
        PyErr_Format(PyExc_TypeError, "%s must be None or a sequence of numbers, not %.80s",
                     name, Py_TYPE(obj)->tp_name);
        return 0;
    }
    n = PySequence_Fast_GET_SIZE(fast);
    if (e && (size_t)n != e->n_global) {
        Py_DECREF(fast);
        PyErr_Format(PyExc_ValueError, "%s has %zd values; this optimizer has %zu (global) tensors",
                     name, n, e->n_global);
        return 0;
    }
    if (!e) {
        Py_DECREF(fast);
        PyErr_Format(PyExc_ValueError, "%s: this optimizer was not created by koala.capi", name);
        return 0;
    }
    *out = (double *)PyMem_Calloc(n ? (size_t)n : 1, sizeof(double));
    if (!*out) {
        Py_DECREF(fast);
        PyErr_NoMemory();
        return 0;
    }
    for (i = 0; i < n; ++i) {
        (*out)[i] = PyFloat_AsDouble(PySequence_Fast_GET_ITEM(fast, i));
        if (PyErr_Occurred()) {
            Py_DECREF(fast);
            PyErr_Format(PyExc_TypeError, "%s[%zd] must be a number", name, i);
            return 0;
        }
    }
    Py_DECREF(fast);
    return 1;
}

/* Sizes from a sequence of ints into *out (PyMem_Malloc'ed), n into *n. */
static int koala_py_sizes_from(PyObject *obj, const char *name, size_t **out, size_t *n_out) {
    PyObject *fast = PySequence_Fast(obj, "");
    Py_ssize_t i, n;
    *out = NULL;
    if (!fast) {
        PyErr_Format(PyExc_TypeError, "%s must be a sequence of ints, not %.80s", name,
                     Py_TYPE(obj)->tp_name);
        return 0;
    }
    n = PySequence_Fast_GET_SIZE(fast);
    *out = (size_t *)PyMem_Calloc(n ? (size_t)n : 1, sizeof(size_t));
    if (!*out) {
        Py_DECREF(fast);
        PyErr_NoMemory();
        return 0;
    }
    for (i = 0; i < n; ++i) {
        (*out)[i] = PyLong_AsSize_t(PySequence_Fast_GET_ITEM(fast, i));
        if (PyErr_Occurred()) {
            Py_DECREF(fast);
            PyErr_Format(PyExc_ValueError, "%s[%zd] must be an int >= 0", name, i);
            return 0;
        }
    }
    Py_DECREF(fast);
    *n_out = (size_t)n;
    return 1;
}

%}

/* ---- statuses -> exceptions ------------------------------------------- */
%typemap(out) koala_status {
    if ((int)$1 < 0) SWIG_fail; /* a wrapper below set a Python exception */
    if ($1 != KOALA_OK) {
        koala_py_raise($1);
        SWIG_fail;
    }
    $result = SWIG_Py_Void();
}

/* ---- streams: None or an int address ---------------------------------- */
%typemap(in) void *stream {
    if ($input == Py_None) {
        $1 = NULL;
    } else if (PyLong_Check($input)) {
        $1 = koala_py_address($input);
        if (PyErr_Occurred()) SWIG_fail;
    } else {
        PyErr_SetString(PyExc_TypeError, "stream must be None or an int (a cudaStream_t address)");
        SWIG_fail;
    }
}

/* ---- arrays of tensors ------------------------------------------------- */
%typemap(in) void *const *params (koala_py_ptrs arr = KOALA_PY_PTRS_EMPTY) {
    if ($input == Py_None) {
        $1 = NULL;
    } else {
        if (!koala_py_ptrs_from($input, "params", 1, 0, &arr)) SWIG_fail;
        $1 = (void *const *)arr.ptrs;
    }
}
%typemap(freearg) void *const *params { koala_py_ptrs_release(&arr$argnum); }

%typemap(in) const void *const *grads (koala_py_ptrs arr = KOALA_PY_PTRS_EMPTY) {
    if ($input == Py_None) {
        $1 = NULL;
    } else {
        if (!koala_py_ptrs_from($input, "grads", 0, 1, &arr)) SWIG_fail;
        $1 = (const void *const *)arr.ptrs;
    }
}
%typemap(freearg) const void *const *grads { koala_py_ptrs_release(&arr$argnum); }

/* ---- koala_update_ptr's scalars --------------------------------------- */
%typemap(in) const void *loss (Py_buffer view, int held = 0),
             const void *loss_var (Py_buffer view, int held = 0) {
    if (!koala_py_scalar_from($input, "$1_name", &view, &held, (const void **)&$1)) SWIG_fail;
}
%typemap(freearg) const void *loss, const void *loss_var {
    if (held$argnum) PyBuffer_Release(&view$argnum);
}

/* ---- koala_create: sizes in, handle out -------------------------------- */
%typemap(in) (size_t n_tensors, const size_t *sizes) (size_t *tmp = NULL) {
    PyObject *fast = PySequence_Fast($input, "sizes must be a sequence of ints");
    Py_ssize_t i, n;
    if (!fast) SWIG_fail;
    n = PySequence_Fast_GET_SIZE(fast);
    tmp = (size_t *)PyMem_Calloc(n ? (size_t)n : 1, sizeof(size_t));
    if (!tmp) {
        Py_DECREF(fast);
        PyErr_NoMemory();
        SWIG_fail;
    }
    for (i = 0; i < n; ++i) {
        tmp[i] = PyLong_AsSize_t(PySequence_Fast_GET_ITEM(fast, i));
        if (PyErr_Occurred()) {
            Py_DECREF(fast);
            PyErr_Format(PyExc_ValueError, "sizes[%zd] must be an int >= 0", i);
            SWIG_fail;
        }
    }
    Py_DECREF(fast);
    $1 = (size_t)n;
    $2 = tmp;
}
%typemap(freearg) (size_t n_tensors, const size_t *sizes) { PyMem_Free(tmp$argnum); }

%typemap(in, numinputs=0) koala_optimizer **out (koala_optimizer *handle = NULL) {
    $1 = &handle;
}
%typemap(argout) koala_optimizer **out {
    $result = SWIG_Python_AppendOutput($result,
                                       SWIG_NewPointerObj(*$1, $*1_descriptor, 0));
}

/* ---- koala_get_info: a dict ------------------------------------------- */
%typemap(in, numinputs=0) koala_info *out (koala_info info) {
    memset(&info, 0, sizeof info);
    info.struct_size = sizeof info;
    $1 = &info;
}
%typemap(argout) koala_info *out {
    PyObject *d = Py_BuildValue("{s:K,s:K,s:d,s:d,s:d,s:d,s:d,s:d,s:d,s:i,s:i}",
        "steps", (unsigned long long)$1->steps,
        "skipped_steps", (unsigned long long)$1->skipped_steps,
        "sigma", $1->sigma, "p00", $1->p00, "p01", $1->p01, "p11", $1->p11,
        "r", $1->r, "qw", $1->qw, "lr", $1->lr, "threads", $1->threads,
        "phase", $1->phase);
    if (!d) SWIG_fail;
    $result = SWIG_Python_AppendOutput($result, d);
}

/* ---- checkpoints: buffers in, size out -------------------------------- */
%typemap(in, numinputs=0) size_t *bytes (size_t n = 0) { $1 = &n; }
%typemap(argout) size_t *bytes {
    $result = SWIG_Python_AppendOutput($result, PyLong_FromSize_t(*$1));
}

%typemap(in) (void *buf, size_t size) (Py_buffer view, int held = 0) {
    if (PyObject_GetBuffer($input, &view, PyBUF_C_CONTIGUOUS | PyBUF_WRITABLE) != 0) {
        PyErr_Clear();
        PyErr_SetString(PyExc_TypeError, "buf must be a writable contiguous buffer (bytearray)");
        SWIG_fail;
    }
    held = 1;
    $1 = view.buf;
    $2 = (size_t)view.len;
}
%typemap(freearg) (void *buf, size_t size) { if (held$argnum) PyBuffer_Release(&view$argnum); }

%typemap(in) (const void *buf, size_t size) (Py_buffer view, int held = 0) {
    if (PyObject_GetBuffer($input, &view, PyBUF_C_CONTIGUOUS) != 0) {
        PyErr_Clear();
        PyErr_SetString(PyExc_TypeError, "buf must be a contiguous buffer (bytes)");
        SWIG_fail;
    }
    held = 1;
    $1 = (void *)view.buf;
    $2 = (size_t)view.len;
}
%typemap(freearg) (const void *buf, size_t size) {
    if (held$argnum) PyBuffer_Release(&view$argnum);
}

/* ---- koala_posterior's out: an array of tensors like params ----------- */
%typemap(in) void *const *out (koala_py_ptrs arr = KOALA_PY_PTRS_EMPTY) {
    if (!koala_py_ptrs_from($input, "out", 1, 0, &arr)) SWIG_fail;
    $1 = (void *const *)arr.ptrs;
}
%typemap(freearg) void *const *out { koala_py_ptrs_release(&arr$argnum); }

/* ---- koala_state_init's buffers (koala_bind_state has its own wrapper) -- */
%typemap(in) void *const *buffers (koala_py_ptrs arr = KOALA_PY_PTRS_EMPTY) {
    if (!koala_py_ptrs_from($input, "buffers", 1, 0, &arr)) SWIG_fail;
    $1 = (void *const *)arr.ptrs;
}
%typemap(freearg) void *const *buffers { koala_py_ptrs_release(&arr$argnum); }

/* ---- float64 blocks (arg1 is the optimizer, converted first) ----------- */
%typemap(in) double *scalars (Py_buffer view, int held = 0) {
    if (!koala_py_doubles_from($input, "scalars", koala_py_scalar_count(arg1), 1, &view, &held,
                               &$1)) SWIG_fail;
}
%typemap(freearg) double *scalars { if (held$argnum) PyBuffer_Release(&view$argnum); }

%typemap(in) double *sums (Py_buffer view, int held = 0) {
    if (!koala_py_doubles_from($input, "sums", koala_py_sums_count(arg1), 1, &view, &held, &$1))
        SWIG_fail;
}
%typemap(freearg) double *sums { if (held$argnum) PyBuffer_Release(&view$argnum); }

%typemap(in) const double *sums (Py_buffer view, int held = 0) {
    double *p = NULL;
    if (!koala_py_doubles_from($input, "sums", koala_py_sums_count(arg1), 0, &view, &held, &p))
        SWIG_fail;
    $1 = p;
}
%typemap(freearg) const double *sums { if (held$argnum) PyBuffer_Release(&view$argnum); }

/* ---- per-tensor hyper-parameters ---------------------------------------- */
%typemap(in) const double *scale (double *tmp = NULL),
             const double *weight_decay (double *tmp = NULL) {
    if (!koala_py_values_from($input, "$1_name", arg1, &tmp)) SWIG_fail;
    $1 = tmp;
}
%typemap(freearg) const double *scale, const double *weight_decay { PyMem_Free(tmp$argnum); }

/* ---- out-parameters: counts and koala_state_layout --------------------- */
%typemap(in, numinputs=0) size_t *count (size_t n = 0),
                          size_t *buffers_per_tensor (size_t n = 0),
                          size_t *scalar_count (size_t n = 0) { $1 = &n; }
%typemap(argout) size_t *count, size_t *buffers_per_tensor, size_t *scalar_count {
    $result = SWIG_Python_AppendOutput($result, PyLong_FromSize_t(*$1));
}
%typemap(in, numinputs=0) koala_dtype *state_dtype (koala_dtype d = (koala_dtype)0) { $1 = &d; }
%typemap(argout) koala_dtype *state_dtype {
    $result = SWIG_Python_AppendOutput($result, PyLong_FromLong((long)*$1));
}

/* koala_config::seed is a uint64_t (stdint.h is not read by SWIG). */
typedef unsigned long long uint64_t;

/* koala_info is returned as a dict; the struct itself is not needed. The
 * shard struct is built by koala_create_sharded's wrapper below from Python
 * values, with this module's callback in it. */
%ignore koala_info;
%ignore koala_shard;
%ignore koala_allreduce_fn;

/* ---- wrappers that replace entry points ---------------------------------
 * koala_config_init: the header's macro, not the 1.0 export (which only
 * fills the 1.0 size of the struct). koala_create / koala_create_sharded /
 * koala_destroy / koala_bind_state: also keep this module's record of the
 * optimizer (see koala_py_extra). They run with the GIL held (%nothread)
 * and release it around the library call. */
%ignore koala_config_init;
%ignore koala_create;
%ignore koala_create_sharded;
%ignore koala_destroy;
%ignore koala_bind_state;
%rename(koala_config_init) koala_py_config_init;
%rename(koala_create) koala_py_create;
%rename(koala_create_sharded) koala_py_create_sharded;
%rename(koala_destroy) koala_py_destroy;
%rename(koala_bind_state) koala_py_bind_state;

%nothread koala_py_create;
%nothread koala_py_create_sharded;
%nothread koala_py_destroy;
%nothread koala_py_bind_state;

%inline %{
void koala_py_config_init(koala_config *cfg, koala_method method) {
    koala_config_init_sized(cfg, method, sizeof(koala_config));
}

koala_status koala_py_create(const koala_config *cfg, size_t n_tensors, const size_t *sizes,
                             koala_dtype dtype, koala_memory memory, koala_optimizer **out) {
    koala_status st;
    koala_py_extra *e = koala_py_extra_new(n_tensors, memory, NULL);
    if (!e) return (koala_status)-1;
    Py_BEGIN_ALLOW_THREADS
    st = koala_create(cfg, n_tensors, sizes, dtype, memory, out);
    Py_END_ALLOW_THREADS
    if (st == KOALA_OK) koala_py_extra_link(e, *out);
    else koala_py_extra_free(e);
    return st;
}

koala_status koala_py_create_sharded(const koala_config *cfg, size_t n_tensors,
                                     const size_t *sizes, size_t n_global,
                                     PyObject *global_index, unsigned long long global_elements,
                                     PyObject *allreduce, koala_dtype dtype,
                                     koala_memory memory, koala_optimizer **out) {
    koala_status st;
    koala_shard shard;
    size_t *index = NULL, n_index = 0;
    koala_py_extra *e;
    if (allreduce != Py_None && !PyCallable_Check(allreduce)) {
        PyErr_Format(PyExc_TypeError, "allreduce must be None or a callable, not %.80s",
                     Py_TYPE(allreduce)->tp_name);
        return (koala_status)-1;
    }
    if (global_index != Py_None) {
        if (!koala_py_sizes_from(global_index, "global_index", &index, &n_index)) {
            PyMem_Free(index);
            return (koala_status)-1;
        }
        if (n_index != n_tensors) {
            PyMem_Free(index);
            PyErr_Format(PyExc_ValueError, "global_index has %zu entries; sizes has %zu",
                         n_index, n_tensors);
            return (koala_status)-1;
        }
    }
    e = koala_py_extra_new(n_global, memory, allreduce);
    if (!e) {
        PyMem_Free(index);
        return (koala_status)-1;
    }
    memset(&shard, 0, sizeof shard);
    shard.struct_size = sizeof shard;
    shard.n_global = n_global;
    shard.global_index = index;
    shard.global_elements = (uint64_t)global_elements;
    shard.allreduce = allreduce == Py_None ? NULL : koala_py_allreduce;
    shard.user = e;
    Py_BEGIN_ALLOW_THREADS
    st = koala_create_sharded(cfg, n_tensors, sizes, &shard, dtype, memory, out);
    Py_END_ALLOW_THREADS
    PyMem_Free(index); /* the library copies the layout */
    if (st == KOALA_OK) koala_py_extra_link(e, *out);
    else koala_py_extra_free(e);
    return st;
}

void koala_py_destroy(koala_optimizer *opt) {
    Py_BEGIN_ALLOW_THREADS
    koala_destroy(opt);
    Py_END_ALLOW_THREADS
    koala_py_extra_drop(opt);
}

koala_status koala_py_bind_state(koala_optimizer *opt, PyObject *buffers, PyObject *scalars) {
    koala_status st;
    koala_py_ptrs arr = KOALA_PY_PTRS_EMPTY;
    Py_buffer view;
    int held = 0;
    double *block = NULL;
    koala_py_extra *e = koala_py_extra_find(opt);
    if (!koala_py_ptrs_from(buffers, "buffers", 1, 0, &arr) ||
        !koala_py_doubles_from(scalars, "scalars", koala_py_scalar_count(opt), 1, &view, &held,
                               &block)) {
        koala_py_ptrs_release(&arr);
        if (held) PyBuffer_Release(&view);
        return (koala_status)-1;
    }
    st = koala_bind_state(opt, (void *const *)arr.ptrs, block);
    if (st != KOALA_OK || !e) { /* nothing bound, or nowhere to keep the views */
        koala_py_ptrs_release(&arr);
        if (held) PyBuffer_Release(&view);
        return st;
    }
    koala_py_extra_release_bound(e);
    e->bound = arr;
    if (held) e->scalars_view = view;
    e->scalars_held = held;
    return st;
}
%}

/* threads="1" above: every other call runs without the GIL; the typemaps,
 * which touch Python objects, run before and after it with the GIL held. */

%include "koala.h"

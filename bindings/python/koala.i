/*
 * koala.i - the SWIG interface of libkoala for Python: the module
 * `koala.capi` (extension `koala._capi`), a one-to-one view of koala.h.
 *
 * The typemaps here only convert: Python objects to pointers and sizes,
 * statuses to exceptions, out-parameters to return values. There is no
 * arithmetic and no knowledge of tensor layouts; the pythonic layer in
 * koala/optimizer.py checks sizes and dtypes before it calls in here.
 *
 * Conventions a caller of koala.capi sees:
 *  - a koala_status other than KOALA_OK raises koala.errors.KoalaError (the
 *    subclass for that status) carrying .status and koala_last_error();
 *    KOALA_OK returns None (or the out-parameters, see below);
 *  - an array of tensors (params, grads) is a sequence whose items are
 *      * an object with the buffer protocol (NumPy array, ...): host memory,
 *        must be C-contiguous, float32 ('f') or float64 ('d'), writable for
 *        params; all items of one call must have the same format;
 *      * an int: a raw address (torch's data_ptr(), CuPy's data.ptr, ...),
 *        host or device, passed through unchecked (only a negative int is
 *        refused, with OverflowError);
 *      * None: NULL (grads only: "no gradient this step");
 *    params itself may be None (koala_predict of KOALA_VANILLA);
 *  - stream is None (NULL) or an int (a cudaStream_t address);
 *  - out-parameters are returned: koala_create -> handle, koala_get_info ->
 *    dict, koala_state_size -> int.
 */
%module(package="koala", threads="1") capi

%{
#define SWIG_FILE_WITH_INIT
#include <string.h>
#include "koala.h"

/* Raises the koala.errors exception for `st` with the library's message.
 * The exception classes live in Python (koala/errors.py) so that the
 * pythonic layer can catch them by type; if that module cannot be
 * imported, a RuntimeError carries the same text. */
static void koala_py_raise(koala_status st) {
    const char *msg = koala_last_error();
    PyObject *mod = PyImport_ImportModule("koala.errors");
    if (mod) {
        PyObject *exc = PyObject_CallMethod(mod, "from_status", "is", (int)st, msg);
        Py_DECREF(mod);
        if (exc) {
            PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
            Py_DECREF(exc);
            return;
        }
    }
    PyErr_Clear();
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

static int koala_py_format_ok(const Py_buffer *v) {
    const char *f = v->format ? v->format : "B";
    if (f[0] == '<' || f[0] == '=' || f[0] == '@') ++f;
    return (strcmp(f, "f") == 0 && v->itemsize == 4) || (strcmp(f, "d") == 0 && v->itemsize == 8);
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
                             "%s[%zd] has format '%s' (itemsize %zd); expected float32 ('f') or "
                             "float64 ('d')",
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
        if (!koala_py_format_ok(view) || view->len < view->itemsize) {
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
%}

/* ---- statuses -> exceptions ------------------------------------------- */
%typemap(out) koala_status {
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
    PyObject *d = Py_BuildValue("{s:K,s:K,s:d,s:d,s:d,s:d,s:d,s:d}",
        "steps", (unsigned long long)$1->steps,
        "skipped_steps", (unsigned long long)$1->skipped_steps,
        "sigma", $1->sigma, "p00", $1->p00, "p01", $1->p01, "p11", $1->p11,
        "r", $1->r, "qw", $1->qw);
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

/* koala_info is returned as a dict; the struct itself is not needed. */
%ignore koala_info;

/* threads="1" above: every call runs without the GIL; the typemaps, which
 * touch Python objects, run before and after it with the GIL held. */

%include "koala.h"

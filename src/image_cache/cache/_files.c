/* Atomic file writes in batches, without the GIL (`make venv` builds cache/_files.so from this file).
 *
 * A worker draws on one thread while another writes the previous images (cache/root.py, FileQueue).
 * Each file costs four system calls; written from Python, the writing thread takes the GIL back after
 * each one and so waits on the drawing thread four times per file, which made writing on a second
 * thread slower than writing in line. Here a whole batch runs with the GIL released once.
 *
 *   write_atomic(folder_fd, names, temps, datas) -> (written, errno)
 *       For each i in order: open temps[i] in the folder (created, truncated, never through a link,
 *       never blocking), write datas[i] whole, close, rename onto names[i] (replacing whatever entry
 *       has that name: a link there is replaced, never followed). Stops at the first failure, removes
 *       that file's temp file and returns how many were written and the errno (0 when all were).
 *       names, temps, datas: tuples of bytes of one length (the tuples keep them alive meanwhile).
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <unistd.h>

#define TEMP_FLAGS (O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC)

typedef struct {
    const char *name, *temp, *data;
    Py_ssize_t size;
} Item;

/* Write one file; 0 or an errno. A signal handled on this thread may interrupt any of the calls (EINTR):
 * they are retried. write() returning 0 for a non-empty request means the disk took nothing: EIO. */
static int write_one(int folder, const Item *item) {
    int fd;
    do fd = openat(folder, item->temp, TEMP_FLAGS, 0644);
    while (fd < 0 && errno == EINTR);
    if (fd < 0) return errno;
    int err = 0;
    for (Py_ssize_t done = 0; done < item->size && !err;) {
        ssize_t n = write(fd, item->data + done, (size_t)(item->size - done));
        if (n > 0) done += n;
        else if (n == 0) err = EIO;
        else if (errno != EINTR) err = errno;
    }
    if (close(fd) < 0 && !err && errno != EINTR) err = errno; /* Linux closes the descriptor even on EINTR */
    if (!err) {
        int renamed;
        do renamed = renameat(folder, item->temp, folder, item->name);
        while (renamed < 0 && errno == EINTR);
        if (renamed < 0) err = errno;
    }
    if (err) unlinkat(folder, item->temp, 0); /* no partial temp file left behind (a crash may still) */
    return err;
}

static int bytes_at(PyObject *tuple, Py_ssize_t i, const char **data, Py_ssize_t *size) {
    PyObject *item = PyTuple_GET_ITEM(tuple, i);
    if (!PyBytes_Check(item)) {
        PyErr_SetString(PyExc_TypeError, "write_atomic takes tuples of bytes");
        return -1;
    }
    *data = PyBytes_AS_STRING(item);
    *size = PyBytes_GET_SIZE(item);
    return 0;
}

static PyObject *write_atomic(PyObject *self, PyObject *args) {
    int folder;
    PyObject *names, *temps, *datas;
    if (!PyArg_ParseTuple(args, "iO!O!O!", &folder, &PyTuple_Type, &names, &PyTuple_Type, &temps, &PyTuple_Type,
                          &datas))
        return NULL;
    Py_ssize_t count = PyTuple_GET_SIZE(names);
    if (PyTuple_GET_SIZE(temps) != count || PyTuple_GET_SIZE(datas) != count) {
        PyErr_SetString(PyExc_ValueError, "write_atomic: names, temps and datas differ in length");
        return NULL;
    }
    Item *items = PyMem_New(Item, count ? count : 1);
    if (items == NULL) return PyErr_NoMemory();
    Py_ssize_t unused;
    for (Py_ssize_t i = 0; i < count; i++) {
        /* Names must hold no NUL byte: the system calls would see a shorter name. */
        if (bytes_at(names, i, &items[i].name, &unused) < 0 || bytes_at(temps, i, &items[i].temp, &unused) < 0
            || bytes_at(datas, i, &items[i].data, &items[i].size) < 0) {
            PyMem_Free(items);
            return NULL;
        }
        if (strlen(items[i].name) != (size_t)PyBytes_GET_SIZE(PyTuple_GET_ITEM(names, i))
            || strlen(items[i].temp) != (size_t)PyBytes_GET_SIZE(PyTuple_GET_ITEM(temps, i))) {
            PyMem_Free(items);
            PyErr_SetString(PyExc_ValueError, "write_atomic: a name holds a NUL byte");
            return NULL;
        }
    }
    Py_ssize_t written = 0;
    int err = 0;
    Py_BEGIN_ALLOW_THREADS
    for (; written < count; written++)
        if ((err = write_one(folder, &items[written])) != 0) break;
    Py_END_ALLOW_THREADS
    PyMem_Free(items);
    return Py_BuildValue("ni", written, err);
}

static PyMethodDef methods[] = {
    {"write_atomic", write_atomic, METH_VARARGS, "Write files atomically, in order, with the GIL released."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_files", "Atomic file writes in batches.", -1, methods,
                                    NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__files(void) {
    PyObject *m = PyModule_Create(&module);
    if (m != NULL && PyModule_AddStringConstant(m, "SOURCE_SHA256", SOURCE_SHA256) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}

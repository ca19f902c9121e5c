#include "mpi_check.h"

#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int mpi_rank = 0, mpi_size = 1;
static int failures = 0;

void mpi_check_init(int *argc, char ***argv) {
    MPI_Init(argc, argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &mpi_rank);
    MPI_Comm_size(MPI_COMM_WORLD, &mpi_size);
    /* MPI errors come back as codes (the all-reduce callbacks turn them
     * into a non-zero return) instead of killing the job on the spot. */
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
}

int check_failures(void) { return failures; }

int check_failures_all(void) {
    int total = 0;
    MPI_Allreduce(&failures, &total, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    return total;
}

int mpi_check_finish(const char *program) {
    const int total = check_failures_all();
    if (mpi_rank == 0) {
        if (total == 0)
            printf("%s: all checks passed on %d rank(s)\n", program, mpi_size);
        else
            printf("%s: %d check(s) failed over %d rank(s)\n", program, total, mpi_size);
        fflush(stdout);
    }
    MPI_Finalize();
    return total == 0 ? 0 : 1;
}

void check_failed(const char *file, int line, const char *fmt, ...) {
    ++failures;
    if (failures > 50) return; /* enough to see the pattern */
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    fprintf(stderr, "rank %d: %s:%d: FAIL: %s\n", mpi_rank, file, line, msg);
    fflush(stderr);
}

void expect_status(koala_status st, koala_status expected, const char *what) {
    if (st == expected) return;
    fprintf(stderr, "rank %d: %s returned %s, expected %s\n  %s\nrank %d: aborting the job\n",
            mpi_rank, what, koala_status_string(st), koala_status_string(expected),
            koala_last_error(), mpi_rank);
    fflush(stderr);
    MPI_Abort(MPI_COMM_WORLD, 3);
}

int sum_doubles(double *buf, size_t count) {
    if (count > (size_t)INT_MAX) return MPI_ERR_COUNT;
    return MPI_Allreduce(MPI_IN_PLACE, buf, (int)count, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
}

double max_rel_diff(const double *a, const double *b, size_t n) {
    double worst = 0.0;
    for (size_t i = 0; i < n; ++i) {
        const double scale = fabs(b[i]) > 1.0 ? fabs(b[i]) : 1.0;
        const double d = fabs(a[i] - b[i]) / scale;
        if (!(d <= worst)) worst = d; /* NaN sticks */
    }
    return worst;
}

int same_on_every_rank(const void *data, size_t bytes) {
    unsigned char *root = malloc(bytes ? bytes : 1);
    if (!root) {
        fprintf(stderr, "rank %d: out of memory\n", mpi_rank);
        MPI_Abort(MPI_COMM_WORLD, 4);
    }
    if (mpi_rank == 0) memcpy(root, data, bytes);
    MPI_Bcast(root, (int)bytes, MPI_BYTE, 0, MPI_COMM_WORLD);
    int same = memcmp(root, data, bytes) == 0, all = 0;
    MPI_Allreduce(&same, &all, 1, MPI_INT, MPI_LAND, MPI_COMM_WORLD);
    free(root);
    return all;
}

/*
 * mpi_check.h - what the MPI tests share: rank bookkeeping, checks that
 * count failures without leaving a collective early, and the one MPI
 * all-reduce (MPI_SUM over doubles) every test sums partial sums with.
 *
 * Collective discipline: every rank runs the same sequence of MPI calls.
 * A failed comparison is counted (CHECK) and the run goes on; a koala call
 * that returns an unexpected status aborts the whole job (MPI_Abort),
 * because that rank may have skipped an all-reduce the others now wait in.
 * At the end mpi_check_finish() sums the failure counts over ranks and
 * returns the process's exit status (0 on every rank, or 1 on every rank).
 */
#ifndef KOALA_TEST_MPI_CHECK_H
#define KOALA_TEST_MPI_CHECK_H

#include <mpi.h>
#include <stddef.h>

#include <koala.h>

extern int mpi_rank, mpi_size;

/* MPI_Init and the rank/size globals. */
void mpi_check_init(int *argc, char ***argv);
/* Sums the failures over ranks, rank 0 prints the verdict, MPI_Finalize.
 * Returns 0 when no rank failed, else 1 (the same on every rank). */
int mpi_check_finish(const char *program);

/* Counts a failure (this rank) and prints the message with the rank. */
void check_failed(const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
#define CHECK(cond, ...)                                               \
    do {                                                               \
        if (!(cond)) check_failed(__FILE__, __LINE__, __VA_ARGS__);    \
    } while (0)

/* Aborts the job unless st == expected (see the top). */
void expect_status(koala_status st, koala_status expected, const char *what);
#define EXPECT_OK(call) expect_status((call), KOALA_OK, #call)

/* This rank's failure count so far. */
int check_failures(void);
/* The number of failures any rank has counted so far (collective), for
 * per-case verdicts printed by rank 0. */
int check_failures_all(void);

/* In-place MPI_Allreduce(MPI_SUM) of count doubles over MPI_COMM_WORLD.
 * Returns 0 or the MPI error code. */
int sum_doubles(double *buf, size_t count);

/* The largest |a - b| / max(1, |b|) over n doubles. */
double max_rel_diff(const double *a, const double *b, size_t n);

/* 1 when every rank passed the same `bytes` bytes at `data` (collective). */
int same_on_every_rank(const void *data, size_t bytes);

#endif

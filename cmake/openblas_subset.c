/* libptrain_openblas.so: the part of OpenBLAS that ptrain calls, linked from the static
 * archive. Referencing the entry points here pulls in only their objects (and the kernels they
 * dispatch to), instead of shipping every BLAS/LAPACK routine in the 36 MiB shared library. */
#include <cblas.h>

void* const ptrain_openblas_entry_points[] = {
    (void*)&cblas_sgemm,
    (void*)&openblas_set_num_threads,
    (void*)&openblas_get_num_threads,
    (void*)&openblas_get_corename,
    (void*)&openblas_get_config,
};

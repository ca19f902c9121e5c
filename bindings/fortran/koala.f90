! koala.f90 - `module koala`: the libkoala C ABI for Fortran 2008.
!
! Two layers, both public:
!
! 1. The C ABI itself, as iso_c_binding interfaces with the C names
!    (koala_create, koala_predict, ...), bind(C) derived types whose layout
!    is exactly koala.h's `koala_config` / `koala_info`, and the enums as
!    integer(c_int) parameters. The handle is a `type(c_ptr)`; device
!    buffers are `type(c_ptr)` values (e.g. from CUDA Fortran's c_devloc).
!
! 2. Fortran-friendly forms, reached through the SAME generic names:
!    - `koala_tensor_list` collects c_loc pointers to assumed-shape
!      real(c_float) / real(c_double) arrays (or raw device pointers), with
!      their sizes and dtype; koala_create / koala_predict / koala_update
!      accept it in place of the raw pointer arrays.
!    - koala_last_error() and koala_status_string(s) return Fortran strings.
!    - koala_get_info(opt, info) sets info%struct_size itself;
!      koala_state_save(opt, bytes) / koala_state_load(opt, bytes) work on an
!      integer(c_int8_t) array.
!
! Arrays put into a tensor list must have the TARGET attribute (or be
! pointers) in the caller and must stay alive and un-reallocated while the
! list is used: the list stores their addresses, the C library writes
! through them. All arithmetic happens in the C++ core; this module only
! converts arguments.
!
! ---- libkoala 1.1 ----------------------------------------------------------
! koala_config_init(cfg, method) calls koala_config_init_sized with this
! module's c_sizeof(cfg), so the 1.1 fields (threads, stochastic_rounding,
! seed, asymmetric, fused_predict, caller_state) are initialised and honoured.
! (The C library's exported koala_config_init is the 1.0 entry point and
! writes only the 1.0 part; this module never binds it.)
!
! Threads. One optimizer must be used by one thread at a time; distinct
! optimizers may run in distinct threads (OpenMP, say) at once. A host
! optimizer runs its passes on cfg%threads CPU threads of the library's own
! pool (0 = the environment variable KOALA_NUM_THREADS, else the CPUs this
! process may use); the workers sleep between calls, they never spin. With
! several MPI ranks per node set cfg%threads (e.g. cores per rank) or
! KOALA_NUM_THREADS. Results do not depend on the thread count.
!
! Many processes (MPI). Every element of the model sits on exactly one
! process; each process creates its optimizer over its own pieces with
! koala_create_sharded and a koala_shard describing the whole model:
!
!   type(koala_shard) :: shard
!   shard%n_global = 3                      ! tensors of the whole model
!   shard%global_elements = total_elements  ! elements of the whole model
!   shard%allreduce = c_funloc(my_allreduce)
!   shard%user = c_loc(comm)                ! handed back to my_allreduce
!   st = koala_create_sharded(cfg, params, shard, KOALA_HOST, opt, &
!                             global_tensor=[1, 3])   ! local tensor i is a piece of
!                                                     ! global tensor global_tensor(i)
!
! The callback, declared with the abstract interface koala_allreduce_fn, sums
! `count` doubles at `buf` over all processes IN PLACE and returns 0 (any
! other value makes the koala call return KOALA_ERROR_COMMUNICATION, with
! nothing changed):
!
!   integer(c_int) function my_allreduce(buf, count, stream, user) bind(C)
!     real(c_double), intent(inout) :: buf(*)
!     integer(c_size_t), value :: count
!     type(c_ptr), value :: stream, user
!     type(MPI_Comm), pointer :: comm
!     integer :: ierr
!     call c_f_pointer(user, comm)
!     call MPI_Allreduce(MPI_IN_PLACE, buf, int(count), MPI_DOUBLE_PRECISION, &
!                        MPI_SUM, comm, ierr)
!     my_allreduce = merge(0_c_int, 1_c_int, ierr == MPI_SUCCESS)
!   end function
!
! koala_update then calls it once per update (koala_predict never
! communicates). Every process passes the same loss and loss_var (the
! global-batch means) and the same absent/present pattern of gradients per
! global tensor. Engines that cannot be called back inside a step use the
! two-phase form instead (shard%allreduce may then be c_null_funptr):
!
!   call koala_sums_size(opt, n) ; allocate(sums(n))
!   st = koala_update_begin(opt, params, grads, sums)   ! this process's partial sums
!   call MPI_Allreduce(MPI_IN_PLACE, sums, int(n), MPI_DOUBLE_PRECISION, MPI_SUM, comm, ierr)
!   st = koala_update_end(opt, loss, loss_var, params, grads, sums)
!
! koala_set_tensor_lr / koala_set_tensor_weight_decay take one value per
! GLOBAL tensor (shard%n_global of them) on every process. The raw bind(C)
! koala_shard%global_index is C's 0-based numbering (a c_ptr to
! integer(c_size_t) values); the Fortran form's global_tensor(:) is 1-based.
module koala
  use, intrinsic :: iso_c_binding
  implicit none
  private

  ! ---- version (keep in step with koala.h) --------------------------------
  integer(c_int), parameter, public :: KOALA_VERSION_MAJOR = 1
  integer(c_int), parameter, public :: KOALA_VERSION_MINOR = 1
  integer(c_int), parameter, public :: KOALA_VERSION_PATCH = 0
  integer(c_int), parameter, public :: KOALA_VERSION_NUMBER = &
       KOALA_VERSION_MAJOR * 10000 + KOALA_VERSION_MINOR * 100 + KOALA_VERSION_PATCH

  ! ---- enums (C `enum` is an int) -----------------------------------------
  ! koala_status
  integer(c_int), parameter, public :: KOALA_OK = 0
  integer(c_int), parameter, public :: KOALA_ERROR_INVALID_ARGUMENT = 1
  integer(c_int), parameter, public :: KOALA_ERROR_OUT_OF_MEMORY = 2
  integer(c_int), parameter, public :: KOALA_ERROR_NOT_FINITE = 3
  integer(c_int), parameter, public :: KOALA_ERROR_UNSUPPORTED = 4
  integer(c_int), parameter, public :: KOALA_ERROR_CUDA = 5
  integer(c_int), parameter, public :: KOALA_ERROR_BAD_STATE = 6
  integer(c_int), parameter, public :: KOALA_ERROR_COMMUNICATION = 7   ! since 1.1: the all-reduce failed
  ! koala_method
  integer(c_int), parameter, public :: KOALA_VANILLA = 1
  integer(c_int), parameter, public :: KOALA_MOMENTUM = 2
  integer(c_int), parameter, public :: KOALA_PLUSPLUS = 3   ! since 1.1: KOALA++ (symmetric koalap.py)
  ! koala_memory
  integer(c_int), parameter, public :: KOALA_HOST = 1
  integer(c_int), parameter, public :: KOALA_DEVICE = 2
  ! koala_dtype
  integer(c_int), parameter, public :: KOALA_FLOAT32 = 1
  integer(c_int), parameter, public :: KOALA_FLOAT64 = 2
  integer(c_int), parameter, public :: KOALA_BFLOAT16 = 3   ! since 1.1 (raw pointers: add_ptr)
  integer(c_int), parameter, public :: KOALA_FLOAT16 = 4    ! since 1.1 (raw pointers: add_ptr)

  ! The 1.0 sizes of the structs (the smallest struct_size the library takes).
  integer(c_size_t), parameter, public :: KOALA_CONFIG_SIZE_1_0 = &
       c_sizeof(0_c_size_t) + 8 + 12 * c_sizeof(0.0_c_double)
  integer(c_size_t), parameter, public :: KOALA_INFO_SIZE_1_0 = &
       c_sizeof(0_c_size_t) + 8 + 8 + 6 * c_sizeof(0.0_c_double)
  ! Index of the lr multiplier in the scalar block of caller-owned state, as in
  ! C (0-based): the Fortran element is scalars(KOALA_SCALAR_LR_SCALE + 1).
  integer(c_size_t), parameter, public :: KOALA_SCALAR_LR_SCALE = 10

  ! A tensor list mixing float32 and float64 arrays gets this dtype, which
  ! koala_create rejects with a message naming `dtype`.
  integer(c_int), parameter, public :: KOALA_MIXED_DTYPE = -1

  ! ---- structs: field order and kinds exactly as in koala.h ---------------
  type, bind(C), public :: koala_config
     integer(c_size_t) :: struct_size = 0
     integer(c_int)    :: method = 0        ! koala_method (C enum = int; 4 bytes padding follow)
     real(c_double)    :: lr = 0, weight_decay = 0
     real(c_double)    :: r = 0             ! NaN selects the online estimate
     real(c_double)    :: alpha_r = 0
     real(c_double)    :: sigma = 0, q = 0                       ! vanilla
     real(c_double)    :: sw = 0, sc = 0, sv = 0, a = 0, qw = 0, qv = 0  ! momentum
     ! ---- since 1.1 (zero = the default behaviour) ----
     integer(c_int)     :: threads = 0              ! HOST: CPU threads; 0 = KOALA_NUM_THREADS or all usable CPUs
     integer(c_int)     :: stochastic_rounding = 0  ! BFLOAT16/FLOAT16: 1 = stochastic rounding
     integer(c_int64_t) :: seed = 0                 ! uint64_t in C: seed of the stochastic rounding
     integer(c_int)     :: asymmetric = 0           ! PLUSPLUS: 1 = the asymmetric variant (w_k = 0)
     integer(c_int)     :: fused_predict = 0        ! MOMENTUM: 1 = update also applies the next prediction
     integer(c_int)     :: caller_state = 0         ! 1 = the caller owns the state (koala_bind_state)
  end type koala_config

  type, bind(C), public :: koala_info
     integer(c_size_t)  :: struct_size = 0
     integer(c_int64_t) :: steps = 0          ! uint64_t in C
     integer(c_int64_t) :: skipped_steps = 0  ! uint64_t in C
     real(c_double)     :: sigma = 0
     real(c_double)     :: p00 = 0, p01 = 0, p11 = 0
     real(c_double)     :: r = 0, qw = 0
     ! ---- since 1.1 ----
     real(c_double)     :: lr = 0             ! the current target multiplier
     integer(c_int)     :: threads = 0        ! HOST: CPU threads the passes run on
     integer(c_int)     :: phase = 0          ! 0 updated, 1 predicted, 2 koala_update_begin done
  end type koala_info

  ! How this process's tensors sit in the whole model (koala_create_sharded;
  ! since 1.1). Layout exactly as koala.h's struct koala_shard.
  type, bind(C), public :: koala_shard
     integer(c_size_t)  :: struct_size = 0          ! = c_sizeof(shard); the Fortran form sets it
     integer(c_size_t)  :: n_global = 0             ! tensors of the whole model (same on every process)
     type(c_ptr)        :: global_index = c_null_ptr  ! [n_tensors] integer(c_size_t), 0-based global
                                                      ! tensor of each local tensor; NULL = identity
     integer(c_int64_t) :: global_elements = 0      ! uint64_t in C: elements of the whole model
     type(c_funptr)     :: allreduce = c_null_funptr  ! procedure(koala_allreduce_fn), via c_funloc
     type(c_ptr)        :: user = c_null_ptr        ! passed to allreduce (e.g. c_loc(comm))
  end type koala_shard

  ! ---- a list of tensors (addresses + element counts + dtype) -------------
  type, public :: koala_tensor_list
     type(c_ptr), allocatable       :: ptrs(:)
     integer(c_size_t), allocatable :: sizes(:)
     integer(c_int)                 :: dtype = 0   ! 0 = empty so far
   contains
     procedure :: add_f32 => list_add_f32
     procedure :: add_f64 => list_add_f64
     generic   :: add => add_f32, add_f64        ! call list%add(array)
     procedure :: add_ptr => list_add_ptr        ! call list%add_ptr(c_ptr, n, dtype), e.g. device memory
     procedure :: add_absent => list_add_absent  ! a NULL entry: "no gradient for this tensor"
     procedure :: count => list_count
     procedure :: clear => list_clear
  end type koala_tensor_list

  public :: koala_config_init, koala_config_init_sized, koala_create, koala_destroy
  public :: koala_predict, koala_update, koala_update_ptr
  public :: koala_get_info, koala_set_lr
  public :: koala_state_size, koala_state_save, koala_state_load
  public :: koala_status_string, koala_last_error, koala_version, koala_device_probe
  ! since 1.1
  public :: koala_allreduce_fn, koala_create_sharded, koala_sums_size
  public :: koala_update_begin, koala_update_end, koala_update_end_ptr
  public :: koala_state_layout, koala_state_init, koala_bind_state
  public :: koala_set_tensor_lr, koala_set_tensor_weight_decay, koala_posterior

  ! The all-reduce callback of a sharded optimizer (koala_allreduce_fn in C):
  ! sums count doubles at buf element-wise over every process, in place
  ! (host memory for host optimizers; device memory, ordered on `stream`,
  ! for device ones); returns 0 on success. Pass c_funloc(your_function).
  abstract interface
     function koala_allreduce_fn(buf, count, stream, user) bind(C) result(status)
       import :: c_double, c_size_t, c_ptr, c_int
       real(c_double), intent(inout) :: buf(*)
       integer(c_size_t), value :: count
       type(c_ptr), value :: stream, user
       integer(c_int) :: status
     end function koala_allreduce_fn
  end interface

  ! ---- the C ABI ----------------------------------------------------------
  interface
     !> Fills the first struct_size bytes of cfg with the defaults of method and
     !> sets cfg%struct_size. koala_config_init(cfg, method) calls it with
     !> c_sizeof(cfg). Since 1.1.
     subroutine koala_config_init_sized(cfg, method, struct_size) &
          bind(C, name='koala_config_init_sized')
       import :: koala_config, c_int, c_size_t
       type(koala_config), intent(inout) :: cfg
       integer(c_int), value :: method
       integer(c_size_t), value :: struct_size
     end subroutine koala_config_init_sized

     subroutine koala_destroy(opt) bind(C, name='koala_destroy')
       import :: c_ptr
       type(c_ptr), value :: opt
     end subroutine koala_destroy

     function koala_set_lr(opt, lr) bind(C, name='koala_set_lr') result(status)
       import :: c_ptr, c_double, c_int
       type(c_ptr), value :: opt
       real(c_double), value :: lr
       integer(c_int) :: status
     end function koala_set_lr

     function koala_state_size(opt, bytes) bind(C, name='koala_state_size') result(status)
       import :: c_ptr, c_size_t, c_int
       type(c_ptr), value :: opt
       integer(c_size_t), intent(out) :: bytes
       integer(c_int) :: status
     end function koala_state_size

     function koala_version() bind(C, name='koala_version') result(v)
       import :: c_int
       integer(c_int) :: v   ! unsigned in C; the value fits an int
     end function koala_version

     function koala_device_probe() bind(C, name='koala_device_probe') result(status)
       import :: c_int
       integer(c_int) :: status
     end function koala_device_probe
  end interface

  ! Generic names: the raw C form plus the Fortran-friendly form.
  interface koala_create
     function koala_create_raw(cfg, n_tensors, sizes, dtype, memory, out) &
          bind(C, name='koala_create') result(status)
       import :: koala_config, c_size_t, c_int, c_ptr
       type(koala_config), intent(in) :: cfg
       integer(c_size_t), value :: n_tensors
       integer(c_size_t), intent(in) :: sizes(*)
       integer(c_int), value :: dtype, memory
       type(c_ptr), intent(out) :: out
       integer(c_int) :: status
     end function koala_create_raw
     module procedure koala_create_list
  end interface koala_create

  interface koala_predict
     function koala_predict_raw(opt, params, stream) bind(C, name='koala_predict') result(status)
       import :: c_ptr, c_int
       type(c_ptr), value :: opt
       type(c_ptr), intent(in) :: params(*)
       type(c_ptr), value :: stream
       integer(c_int) :: status
     end function koala_predict_raw
     module procedure koala_predict_list
  end interface koala_predict

  interface koala_update
     function koala_update_raw(opt, loss, loss_var, params, grads, stream) &
          bind(C, name='koala_update') result(status)
       import :: c_ptr, c_double, c_int
       type(c_ptr), value :: opt
       real(c_double), value :: loss, loss_var
       type(c_ptr), intent(in) :: params(*), grads(*)
       type(c_ptr), value :: stream
       integer(c_int) :: status
     end function koala_update_raw
     module procedure koala_update_list
  end interface koala_update

  interface koala_update_ptr
     function koala_update_ptr_raw(opt, loss, loss_var, loss_dtype, params, grads, stream) &
          bind(C, name='koala_update_ptr') result(status)
       import :: c_ptr, c_int
       type(c_ptr), value :: opt, loss, loss_var
       integer(c_int), value :: loss_dtype
       type(c_ptr), intent(in) :: params(*), grads(*)
       type(c_ptr), value :: stream
       integer(c_int) :: status
     end function koala_update_ptr_raw
     module procedure koala_update_ptr_list
  end interface koala_update_ptr

  interface koala_get_info
     function koala_get_info_raw(opt, stream, out) bind(C, name='koala_get_info') result(status)
       import :: c_ptr, koala_info, c_int
       type(c_ptr), value :: opt, stream
       type(koala_info), intent(inout) :: out
       integer(c_int) :: status
     end function koala_get_info_raw
     module procedure koala_get_info_simple
  end interface koala_get_info

  interface koala_state_save
     function koala_state_save_raw(opt, buf, size, stream) bind(C, name='koala_state_save') &
          result(status)
       import :: c_ptr, c_size_t, c_int
       type(c_ptr), value :: opt, buf
       integer(c_size_t), value :: size
       type(c_ptr), value :: stream
       integer(c_int) :: status
     end function koala_state_save_raw
     module procedure koala_state_save_bytes
  end interface koala_state_save

  interface koala_state_load
     function koala_state_load_raw(opt, buf, size, stream) bind(C, name='koala_state_load') &
          result(status)
       import :: c_ptr, c_size_t, c_int
       type(c_ptr), value :: opt, buf
       integer(c_size_t), value :: size
       type(c_ptr), value :: stream
       integer(c_int) :: status
     end function koala_state_load_raw
     module procedure koala_state_load_bytes
  end interface koala_state_load

  ! ---- since 1.1: many processes -------------------------------------------

  interface koala_create_sharded
     function koala_create_sharded_raw(cfg, n_tensors, sizes, shard, dtype, memory, out) &
          bind(C, name='koala_create_sharded') result(status)
       import :: koala_config, koala_shard, c_size_t, c_int, c_ptr
       type(koala_config), intent(in) :: cfg
       integer(c_size_t), value :: n_tensors
       integer(c_size_t), intent(in) :: sizes(*)
       ! TARGET: the library keeps shard%user (and calls shard%allreduce with
       ! it later). Without it gfortran (12, -O1 and up) assumes nothing
       ! reached through the shard escapes this call, and caches variables
       ! the callback later changes through `user` (tests/fortran checks it).
       type(koala_shard), intent(in), target :: shard
       integer(c_int), value :: dtype, memory
       type(c_ptr), intent(out) :: out
       integer(c_int) :: status
     end function koala_create_sharded_raw
     module procedure koala_create_sharded_list
  end interface koala_create_sharded

  interface
     !> count = the doubles of the partial-sums buffer (koala_update_begin /
     !> koala_update_end, and of each all-reduce).
     function koala_sums_size(opt, count) bind(C, name='koala_sums_size') result(status)
       import :: c_ptr, c_size_t, c_int
       type(c_ptr), value :: opt
       integer(c_size_t), intent(out) :: count
       integer(c_int) :: status
     end function koala_sums_size
  end interface

  interface koala_update_begin
     function koala_update_begin_raw(opt, params, grads, sums, stream) &
          bind(C, name='koala_update_begin') result(status)
       import :: c_ptr, c_int
       type(c_ptr), value :: opt
       type(c_ptr), intent(in) :: params(*), grads(*)
       type(c_ptr), value :: sums, stream
       integer(c_int) :: status
     end function koala_update_begin_raw
     module procedure koala_update_begin_list
  end interface koala_update_begin

  interface koala_update_end
     function koala_update_end_raw(opt, loss, loss_var, params, grads, sums, stream) &
          bind(C, name='koala_update_end') result(status)
       import :: c_ptr, c_double, c_int
       type(c_ptr), value :: opt
       real(c_double), value :: loss, loss_var
       type(c_ptr), intent(in) :: params(*), grads(*)
       type(c_ptr), value :: sums, stream
       integer(c_int) :: status
     end function koala_update_end_raw
     module procedure koala_update_end_list
  end interface koala_update_end

  interface koala_update_end_ptr
     function koala_update_end_ptr_raw(opt, loss, loss_var, loss_dtype, params, grads, sums, &
          stream) bind(C, name='koala_update_end_ptr') result(status)
       import :: c_ptr, c_int
       type(c_ptr), value :: opt, loss, loss_var
       integer(c_int), value :: loss_dtype
       type(c_ptr), intent(in) :: params(*), grads(*)
       type(c_ptr), value :: sums, stream
       integer(c_int) :: status
     end function koala_update_end_ptr_raw
     module procedure koala_update_end_ptr_list
  end interface koala_update_end_ptr

  ! ---- since 1.1: state the caller owns ------------------------------------

  interface
     !> The shape of the optimizer's state: buffers_per_tensor buffers of
     !> sizes(i) elements of state_dtype per tensor, scalar_count doubles.
     function koala_state_layout(opt, buffers_per_tensor, state_dtype, scalar_count) &
          bind(C, name='koala_state_layout') result(status)
       import :: c_ptr, c_size_t, c_int
       type(c_ptr), value :: opt
       integer(c_size_t), intent(out) :: buffers_per_tensor
       integer(c_int), intent(out) :: state_dtype
       integer(c_size_t), intent(out) :: scalar_count
       integer(c_int) :: status
     end function koala_state_layout
  end interface

  interface koala_state_init
     function koala_state_init_raw(opt, buffers, scalars, stream) &
          bind(C, name='koala_state_init') result(status)
       import :: c_ptr, c_int
       type(c_ptr), value :: opt
       type(c_ptr), intent(in) :: buffers(*)
       type(c_ptr), value :: scalars, stream
       integer(c_int) :: status
     end function koala_state_init_raw
     module procedure koala_state_init_list
  end interface koala_state_init

  interface koala_bind_state
     function koala_bind_state_raw(opt, buffers, scalars) bind(C, name='koala_bind_state') &
          result(status)
       import :: c_ptr, c_int
       type(c_ptr), value :: opt
       type(c_ptr), intent(in), target :: buffers(*)   ! the library keeps these addresses
       type(c_ptr), value :: scalars
       integer(c_int) :: status
     end function koala_bind_state_raw
     module procedure koala_bind_state_list
  end interface koala_bind_state

  ! ---- since 1.1: per-tensor hyper-parameters and the posterior ------------

  interface koala_set_tensor_lr
     function koala_set_tensor_lr_raw(opt, scale, stream) bind(C, name='koala_set_tensor_lr') &
          result(status)
       import :: c_ptr, c_int
       type(c_ptr), value :: opt, scale, stream   ! scale: NULL restores 1 for every tensor
       integer(c_int) :: status
     end function koala_set_tensor_lr_raw
     module procedure koala_set_tensor_lr_array
  end interface koala_set_tensor_lr

  interface koala_set_tensor_weight_decay
     function koala_set_tensor_weight_decay_raw(opt, weight_decay, stream) &
          bind(C, name='koala_set_tensor_weight_decay') result(status)
       import :: c_ptr, c_int
       type(c_ptr), value :: opt, weight_decay, stream   ! NULL restores cfg%weight_decay
       integer(c_int) :: status
     end function koala_set_tensor_weight_decay_raw
     module procedure koala_set_tensor_weight_decay_array
  end interface koala_set_tensor_weight_decay

  interface koala_posterior
     function koala_posterior_raw(opt, params, out, stream) bind(C, name='koala_posterior') &
          result(status)
       import :: c_ptr, c_int
       type(c_ptr), value :: opt
       type(c_ptr), intent(in) :: params(*), out(*)
       type(c_ptr), value :: stream
       integer(c_int) :: status
     end function koala_posterior_raw
     module procedure koala_posterior_list
  end interface koala_posterior

  ! C strings come back as pointers; the public names return Fortran strings.
  interface
     function c_koala_status_string(s) bind(C, name='koala_status_string') result(p)
       import :: c_int, c_ptr
       integer(c_int), value :: s
       type(c_ptr) :: p
     end function c_koala_status_string

     function c_koala_last_error() bind(C, name='koala_last_error') result(p)
       import :: c_ptr
       type(c_ptr) :: p
     end function c_koala_last_error

     function c_strlen(s) bind(C, name='strlen') result(n)
       import :: c_ptr, c_size_t
       type(c_ptr), value :: s
       integer(c_size_t) :: n
     end function c_strlen
  end interface

contains

  ! ---- configuration ---------------------------------------------------------

  !> The official code's defaults for `method` in the whole (1.1) struct:
  !> koala_config_init_sized with this module's struct size, as koala.h's
  !> koala_config_init macro does for C.
  subroutine koala_config_init(cfg, method)
    type(koala_config), intent(inout) :: cfg
    integer(c_int), intent(in) :: method
    call koala_config_init_sized(cfg, method, c_sizeof(cfg))
  end subroutine koala_config_init

  ! ---- strings --------------------------------------------------------------

  ! Copies a NUL-terminated C string into a Fortran string ('' for NULL).
  function fortran_string(p) result(s)
    type(c_ptr), intent(in) :: p
    character(len=:), allocatable :: s
    character(kind=c_char), pointer :: chars(:)
    integer :: n, i
    if (.not. c_associated(p)) then
       s = ''
       return
    end if
    n = int(c_strlen(p))
    call c_f_pointer(p, chars, [n])
    allocate(character(len=n) :: s)
    do i = 1, n
       s(i:i) = chars(i)
    end do
  end function fortran_string

  !> The static English name of a status, e.g. "KOALA_ERROR_NOT_FINITE: ...".
  function koala_status_string(s) result(text)
    integer(c_int), intent(in) :: s
    character(len=:), allocatable :: text
    text = fortran_string(c_koala_status_string(s))
  end function koala_status_string

  !> This thread's last error message ("" if none), naming argument and reason.
  function koala_last_error() result(text)
    character(len=:), allocatable :: text
    text = fortran_string(c_koala_last_error())
  end function koala_last_error

  ! ---- tensor lists ---------------------------------------------------------

  subroutine list_append(self, p, n, dtype)
    class(koala_tensor_list), intent(inout) :: self
    type(c_ptr), intent(in) :: p
    integer(c_size_t), intent(in) :: n
    integer(c_int), intent(in) :: dtype
    if (.not. allocated(self%ptrs)) then
       allocate(self%ptrs(0), self%sizes(0))
    end if
    self%ptrs = [self%ptrs, p]
    self%sizes = [self%sizes, n]
    if (dtype /= 0) then
       if (self%dtype == 0) then
          self%dtype = dtype
       else if (self%dtype /= dtype) then
          self%dtype = KOALA_MIXED_DTYPE
       end if
    end if
  end subroutine list_append

  ! The dummies are not CONTIGUOUS on purpose: for a strided actual argument
  ! the compiler would pass a temporary copy, and the list would keep the
  ! address of that copy. A strided array is refused instead. (INTENT(IN)
  ! concerns this call only; the library later writes through the stored
  ! address, which is why the caller's array needs TARGET.)
  subroutine list_add_f32(self, x)
    class(koala_tensor_list), intent(inout) :: self
    real(c_float), intent(in), target :: x(:)
    if (.not. is_contiguous(x)) error stop 'koala_tensor_list%add: the array is not contiguous'
    call list_append(self, c_loc(x), int(size(x), c_size_t), KOALA_FLOAT32)
  end subroutine list_add_f32

  subroutine list_add_f64(self, x)
    class(koala_tensor_list), intent(inout) :: self
    real(c_double), intent(in), target :: x(:)
    if (.not. is_contiguous(x)) error stop 'koala_tensor_list%add: the array is not contiguous'
    call list_append(self, c_loc(x), int(size(x), c_size_t), KOALA_FLOAT64)
  end subroutine list_add_f64

  !> Any address with its element count and dtype (device memory, say).
  subroutine list_add_ptr(self, p, n, dtype)
    class(koala_tensor_list), intent(inout) :: self
    type(c_ptr), intent(in) :: p
    integer(c_size_t), intent(in) :: n
    integer(c_int), intent(in) :: dtype
    call list_append(self, p, n, dtype)
  end subroutine list_add_ptr

  !> A NULL entry; in a gradient list it means "no gradient this step".
  subroutine list_add_absent(self, n)
    class(koala_tensor_list), intent(inout) :: self
    integer(c_size_t), intent(in) :: n   ! the tensor's size, kept for the layout
    call list_append(self, c_null_ptr, n, 0_c_int)
  end subroutine list_add_absent

  integer function list_count(self)
    class(koala_tensor_list), intent(in) :: self
    list_count = 0
    if (allocated(self%ptrs)) list_count = size(self%ptrs)
  end function list_count

  subroutine list_clear(self)
    class(koala_tensor_list), intent(inout) :: self
    if (allocated(self%ptrs)) deallocate(self%ptrs)
    if (allocated(self%sizes)) deallocate(self%sizes)
    self%dtype = 0
  end subroutine list_clear

  ! An empty list is passed as one NULL pointer, so the C side sees a valid
  ! array and reports the real problem (n_tensors is 0, params[0] is NULL).
  function pointers_of(list) result(ptrs)
    type(koala_tensor_list), intent(in) :: list
    type(c_ptr), allocatable :: ptrs(:)
    if (list%count() == 0) then
       ptrs = [c_null_ptr]
    else
       ptrs = list%ptrs
    end if
  end function pointers_of

  function stream_or_null(stream) result(s)
    type(c_ptr), intent(in), optional :: stream
    type(c_ptr) :: s
    s = c_null_ptr
    if (present(stream)) s = stream
  end function stream_or_null

  ! ---- Fortran-friendly forms of the C calls -------------------------------

  !> Creates an optimizer whose layout (sizes, dtype) is that of `params`.
  function koala_create_list(cfg, params, memory, opt) result(status)
    type(koala_config), intent(in) :: cfg
    type(koala_tensor_list), intent(in) :: params
    integer(c_int), intent(in) :: memory
    type(c_ptr), intent(out) :: opt
    integer(c_int) :: status
    integer(c_size_t) :: one_size(1)
    opt = c_null_ptr
    if (params%count() == 0) then
       one_size = 0
       status = koala_create_raw(cfg, 0_c_size_t, one_size, params%dtype, memory, opt)
    else
       status = koala_create_raw(cfg, int(params%count(), c_size_t), params%sizes, &
                                 params%dtype, memory, opt)
    end if
  end function koala_create_list

  function koala_predict_list(opt, params, stream) result(status)
    type(c_ptr), intent(in) :: opt
    type(koala_tensor_list), intent(in) :: params
    type(c_ptr), intent(in), optional :: stream
    integer(c_int) :: status
    status = koala_predict_raw(opt, pointers_of(params), stream_or_null(stream))
  end function koala_predict_list

  function koala_update_list(opt, loss, loss_var, params, grads, stream) result(status)
    type(c_ptr), intent(in) :: opt
    real(c_double), intent(in) :: loss, loss_var
    type(koala_tensor_list), intent(in) :: params, grads
    type(c_ptr), intent(in), optional :: stream
    integer(c_int) :: status
    status = koala_update_raw(opt, loss, loss_var, pointers_of(params), pointers_of(grads), &
                              stream_or_null(stream))
  end function koala_update_list

  !> koala_update with loss and loss_var read from memory of the optimizer's
  !> kind (device memory for a device optimizer), scalars of `loss_dtype`.
  function koala_update_ptr_list(opt, loss, loss_var, loss_dtype, params, grads, stream) &
       result(status)
    type(c_ptr), intent(in) :: opt, loss, loss_var
    integer(c_int), intent(in) :: loss_dtype
    type(koala_tensor_list), intent(in) :: params, grads
    type(c_ptr), intent(in), optional :: stream
    integer(c_int) :: status
    status = koala_update_ptr_raw(opt, loss, loss_var, loss_dtype, pointers_of(params), &
                                  pointers_of(grads), stream_or_null(stream))
  end function koala_update_ptr_list

  !> koala_get_info with info%struct_size set here.
  function koala_get_info_simple(opt, info) result(status)
    type(c_ptr), intent(in) :: opt
    type(koala_info), intent(out) :: info
    integer(c_int) :: status
    info%struct_size = c_sizeof(info)
    status = koala_get_info_raw(opt, c_null_ptr, info)
  end function koala_get_info_simple

  !> Saves the checkpoint into `bytes` (allocated here to the exact size).
  function koala_state_save_bytes(opt, bytes) result(status)
    type(c_ptr), intent(in) :: opt
    integer(c_int8_t), allocatable, target, intent(out) :: bytes(:)
    integer(c_int) :: status
    integer(c_size_t) :: n
    status = koala_state_size(opt, n)
    if (status /= KOALA_OK) return
    allocate(bytes(max(n, 1_c_size_t)))
    status = koala_state_save_raw(opt, c_loc(bytes), n, c_null_ptr)
    if (status /= KOALA_OK) then
       deallocate(bytes)
    else if (n == 0) then
       deallocate(bytes)
       allocate(bytes(0))
    end if
  end function koala_state_save_bytes

  !> Loads a checkpoint written by koala_state_save.
  function koala_state_load_bytes(opt, bytes) result(status)
    type(c_ptr), intent(in) :: opt
    integer(c_int8_t), intent(in), target, contiguous :: bytes(:)
    integer(c_int) :: status
    integer(c_int8_t), target :: empty(1)
    if (size(bytes) == 0) then
       status = koala_state_load_raw(opt, c_loc(empty), 0_c_size_t, c_null_ptr)
    else
       status = koala_state_load_raw(opt, c_loc(bytes), int(size(bytes), c_size_t), c_null_ptr)
    end if
  end function koala_state_load_bytes

  ! ---- since 1.1 -------------------------------------------------------------

  ! c_loc of a real(c_double) array the library reads or keeps (no copy: a
  ! strided section is refused, as in the tensor lists). NULL when empty.
  function double_array_address(x, what) result(p)
    real(c_double), intent(in), target :: x(:)
    character(len=*), intent(in) :: what
    type(c_ptr) :: p
    if (.not. is_contiguous(x)) error stop 'koala: ' // what // ' is not a contiguous array'
    p = c_null_ptr
    if (size(x) > 0) p = c_loc(x)
  end function double_array_address

  !> Creates a sharded optimizer over this process's pieces (`params`). The
  !> shard's struct_size is set here. global_tensor(i) (1-based, Fortran
  !> numbering) is the global tensor that local tensor i is a piece of; when
  !> absent, shard%global_index is used as given (NULL: local i = global i).
  function koala_create_sharded_list(cfg, params, shard, memory, opt, global_tensor) &
       result(status)
    type(koala_config), intent(in) :: cfg
    type(koala_tensor_list), intent(in) :: params
    type(koala_shard), intent(in), target :: shard   ! TARGET: see koala_create_sharded_raw
    integer(c_int), intent(in) :: memory
    type(c_ptr), intent(out) :: opt
    integer(c_size_t), intent(in), optional :: global_tensor(:)
    integer(c_int) :: status
    type(koala_shard) :: s
    integer(c_size_t), allocatable, target :: index0(:)
    integer(c_size_t) :: one_size(1)
    s = shard
    s%struct_size = c_sizeof(s)
    if (present(global_tensor)) then
       allocate(index0(max(size(global_tensor), 1)))
       ! 1-based to 0-based; 0 (and below) becomes a huge index the library
       ! rejects naming global_index
       index0(1:size(global_tensor)) = global_tensor - 1_c_size_t
       s%global_index = c_loc(index0)
    end if
    opt = c_null_ptr
    if (params%count() == 0) then
       ! A process holding nothing: its dtype is never used; an empty list has
       ! none, so take float32 (any valid dtype would do).
       one_size = 0
       status = koala_create_sharded_raw(cfg, 0_c_size_t, one_size, s, KOALA_FLOAT32, memory, opt)
    else
       status = koala_create_sharded_raw(cfg, int(params%count(), c_size_t), params%sizes, s, &
                                         params%dtype, memory, opt)
    end if
  end function koala_create_sharded_list

  !> Phase 1 of the two-phase update: this process's partial sums into
  !> sums(1:koala_sums_size) (host memory; device optimizers: the raw form).
  function koala_update_begin_list(opt, params, grads, sums, stream) result(status)
    type(c_ptr), intent(in) :: opt
    type(koala_tensor_list), intent(in) :: params, grads
    real(c_double), intent(inout), target :: sums(:)
    type(c_ptr), intent(in), optional :: stream
    integer(c_int) :: status
    status = koala_update_begin_raw(opt, pointers_of(params), pointers_of(grads), &
                                    double_array_address(sums, 'sums'), stream_or_null(stream))
  end function koala_update_begin_list

  !> Phase 2: finishes the update from the summed buffer.
  function koala_update_end_list(opt, loss, loss_var, params, grads, sums, stream) &
       result(status)
    type(c_ptr), intent(in) :: opt
    real(c_double), intent(in) :: loss, loss_var
    type(koala_tensor_list), intent(in) :: params, grads
    real(c_double), intent(in), target :: sums(:)
    type(c_ptr), intent(in), optional :: stream
    integer(c_int) :: status
    status = koala_update_end_raw(opt, loss, loss_var, pointers_of(params), pointers_of(grads), &
                                  double_array_address(sums, 'sums'), stream_or_null(stream))
  end function koala_update_end_list

  !> Phase 2 with loss and loss_var read from memory of the optimizer's kind.
  function koala_update_end_ptr_list(opt, loss, loss_var, loss_dtype, params, grads, sums, &
       stream) result(status)
    type(c_ptr), intent(in) :: opt, loss, loss_var
    integer(c_int), intent(in) :: loss_dtype
    type(koala_tensor_list), intent(in) :: params, grads
    real(c_double), intent(in), target :: sums(:)
    type(c_ptr), intent(in), optional :: stream
    integer(c_int) :: status
    status = koala_update_end_ptr_raw(opt, loss, loss_var, loss_dtype, pointers_of(params), &
                                      pointers_of(grads), double_array_address(sums, 'sums'), &
                                      stream_or_null(stream))
  end function koala_update_end_ptr_list

  !> Writes the initial caller-owned state: `buffers` lists buffer b of tensor
  !> i at position b*n_tensors + i (koala_state_layout gives the count and
  !> dtype), `scalars` has scalar_count elements.
  function koala_state_init_list(opt, buffers, scalars, stream) result(status)
    type(c_ptr), intent(in) :: opt
    type(koala_tensor_list), intent(in) :: buffers
    real(c_double), intent(inout), target :: scalars(:)
    type(c_ptr), intent(in), optional :: stream
    integer(c_int) :: status
    status = koala_state_init_raw(opt, pointers_of(buffers), &
                                  double_array_address(scalars, 'scalars'), stream_or_null(stream))
  end function koala_state_init_list

  !> Makes the following calls read and write the state in `buffers` /
  !> `scalars` (laid out as for koala_state_init). The library keeps the
  !> ADDRESSES: the arrays need TARGET and must stay alive and in place.
  function koala_bind_state_list(opt, buffers, scalars) result(status)
    type(c_ptr), intent(in) :: opt
    type(koala_tensor_list), intent(in) :: buffers
    real(c_double), intent(inout), target :: scalars(:)
    integer(c_int) :: status
    status = koala_bind_state_raw(opt, pointers_of(buffers), double_array_address(scalars, 'scalars'))
  end function koala_bind_state_list

  !> Per-tensor lr multipliers, one per global tensor; absent: 1 for every tensor.
  function koala_set_tensor_lr_array(opt, scale, stream) result(status)
    type(c_ptr), intent(in) :: opt
    real(c_double), intent(in), target, optional :: scale(:)
    type(c_ptr), intent(in), optional :: stream
    integer(c_int) :: status
    type(c_ptr) :: p
    real(c_double), target :: none(1)
    p = c_null_ptr
    if (present(scale)) then
       p = double_array_address(scale, 'scale')
       ! an empty array is not "restore the defaults": let the library see a
       ! (too short) array instead of NULL
       if (size(scale) == 0) p = c_loc(none)
    end if
    status = koala_set_tensor_lr_raw(opt, p, stream_or_null(stream))
  end function koala_set_tensor_lr_array

  !> Per-tensor weight decay, one per global tensor; absent: cfg%weight_decay.
  function koala_set_tensor_weight_decay_array(opt, weight_decay, stream) result(status)
    type(c_ptr), intent(in) :: opt
    real(c_double), intent(in), target, optional :: weight_decay(:)
    type(c_ptr), intent(in), optional :: stream
    integer(c_int) :: status
    type(c_ptr) :: p
    real(c_double), target :: none(1)
    p = c_null_ptr
    if (present(weight_decay)) then
       p = double_array_address(weight_decay, 'weight_decay')
       if (size(weight_decay) == 0) p = c_loc(none)
    end if
    status = koala_set_tensor_weight_decay_raw(opt, p, stream_or_null(stream))
  end function koala_set_tensor_weight_decay_array

  !> The posterior weights of the last update into `out` (same layout as
  !> `params`, distinct arrays).
  function koala_posterior_list(opt, params, out, stream) result(status)
    type(c_ptr), intent(in) :: opt
    type(koala_tensor_list), intent(in) :: params, out
    type(c_ptr), intent(in), optional :: stream
    integer(c_int) :: status
    status = koala_posterior_raw(opt, pointers_of(params), pointers_of(out), stream_or_null(stream))
  end function koala_posterior_list

end module koala

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
module koala
  use, intrinsic :: iso_c_binding
  implicit none
  private

  ! ---- version (keep in step with koala.h) --------------------------------
  integer(c_int), parameter, public :: KOALA_VERSION_MAJOR = 1
  integer(c_int), parameter, public :: KOALA_VERSION_MINOR = 0
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
  ! koala_method
  integer(c_int), parameter, public :: KOALA_VANILLA = 1
  integer(c_int), parameter, public :: KOALA_MOMENTUM = 2
  ! koala_memory
  integer(c_int), parameter, public :: KOALA_HOST = 1
  integer(c_int), parameter, public :: KOALA_DEVICE = 2
  ! koala_dtype
  integer(c_int), parameter, public :: KOALA_FLOAT32 = 1
  integer(c_int), parameter, public :: KOALA_FLOAT64 = 2

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
  end type koala_config

  type, bind(C), public :: koala_info
     integer(c_size_t)  :: struct_size = 0
     integer(c_int64_t) :: steps = 0          ! uint64_t in C
     integer(c_int64_t) :: skipped_steps = 0  ! uint64_t in C
     real(c_double)     :: sigma = 0
     real(c_double)     :: p00 = 0, p01 = 0, p11 = 0
     real(c_double)     :: r = 0, qw = 0
  end type koala_info

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

  public :: koala_config_init, koala_create, koala_destroy
  public :: koala_predict, koala_update, koala_update_ptr
  public :: koala_get_info, koala_set_lr
  public :: koala_state_size, koala_state_save, koala_state_load
  public :: koala_status_string, koala_last_error, koala_version, koala_device_probe

  ! ---- the C ABI ----------------------------------------------------------
  interface
     subroutine koala_config_init(cfg, method) bind(C, name='koala_config_init')
       import :: koala_config, c_int
       type(koala_config), intent(inout) :: cfg
       integer(c_int), value :: method
     end subroutine koala_config_init

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

end module koala

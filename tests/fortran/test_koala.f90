! test_koala.f90 - tests of `module koala` (TAP output, one line per check).
!
! - layout: the bind(C) types match koala.h's structs (sizes and every field
!   offset, as the C compiler sees them in c_reference.c);
! - defaults: koala_config_init fills the values documented in koala.h;
! - one KOALA-V step on float64 data against the formulas of ALGORITHM.md §3
!   evaluated here in float64 (an independent reference);
! - three KOALA-M and KOALA-V steps on float32 data through the Fortran
!   wrappers against the same steps run through the C ABI by c_reference.c
!   (bit-identical: the binding must not change a single number);
! - checkpoint round trip; error paths with status and message.
module test_support
  use, intrinsic :: iso_c_binding
  implicit none
  integer :: n_checks = 0, n_failed = 0
contains
  subroutine check(ok, what)
    logical, intent(in) :: ok
    character(len=*), intent(in) :: what
    n_checks = n_checks + 1
    if (ok) then
       write(*, '(a, i0, a, a)') 'ok ', n_checks, ' - ', what
    else
       n_failed = n_failed + 1
       write(*, '(a, i0, a, a)') 'not ok ', n_checks, ' - ', what
    end if
  end subroutine check

  logical function close_rel(a, b, tol)
    real(c_double), intent(in) :: a, b, tol
    close_rel = abs(a - b) <= tol * max(abs(a), abs(b), 1e-300_c_double)
  end function close_rel
end module test_support

program test_koala
  use, intrinsic :: iso_c_binding
  use, intrinsic :: ieee_arithmetic, only: ieee_is_nan, ieee_value, ieee_quiet_nan
  use koala
  use test_support
  implicit none

  interface
     function ref_config_layout(offsets) bind(C) result(n)
       import :: c_size_t
       integer(c_size_t), intent(out) :: offsets(14)
       integer(c_size_t) :: n
     end function ref_config_layout
     function ref_info_layout(offsets) bind(C) result(n)
       import :: c_size_t
       integer(c_size_t), intent(out) :: offsets(9)
       integer(c_size_t) :: n
     end function ref_info_layout
     function ref_run_f32(method, steps, n1, n2, x1, x2, g1, g2, loss, loss_var, info) &
          bind(C) result(status)
       import :: c_int, c_size_t, c_float, c_double, koala_info
       integer(c_int), value :: method, steps
       integer(c_size_t), value :: n1, n2
       real(c_float), intent(inout) :: x1(*), x2(*)
       real(c_float), intent(in) :: g1(*), g2(*)
       real(c_double), intent(in) :: loss(*), loss_var(*)
       type(koala_info), intent(out) :: info
       integer(c_int) :: status
     end function ref_run_f32
  end interface

  call test_layout()
  call test_defaults()
  call test_vanilla_step_against_formula()
  call test_same_as_c(KOALA_MOMENTUM, 'KOALA-M')
  call test_same_as_c(KOALA_VANILLA, 'KOALA-V')
  call test_checkpoint_round_trip()
  call test_errors()
  call test_update_ptr()

  write(*, '(a, i0)') '1..', n_checks
  write(*, '(a, i0, a, i0, a)') '# ', n_checks - n_failed, ' passed, ', n_failed, ' failed'
  if (n_failed > 0) stop 1

contains

  integer(c_size_t) function offset_of(base, field)
    type(c_ptr), intent(in) :: base, field
    offset_of = int(transfer(field, 0_c_intptr_t) - transfer(base, 0_c_intptr_t), c_size_t)
  end function offset_of

  subroutine test_layout()
    type(koala_config), target :: cfg
    type(koala_info), target :: info
    integer(c_size_t) :: c_off(14), f_off(14), c_size
    type(c_ptr) :: b

    c_size = ref_config_layout(c_off)
    b = c_loc(cfg)
    f_off = [offset_of(b, c_loc(cfg%struct_size)), offset_of(b, c_loc(cfg%method)), &
             offset_of(b, c_loc(cfg%lr)), offset_of(b, c_loc(cfg%weight_decay)), &
             offset_of(b, c_loc(cfg%r)), offset_of(b, c_loc(cfg%alpha_r)), &
             offset_of(b, c_loc(cfg%sigma)), offset_of(b, c_loc(cfg%q)), &
             offset_of(b, c_loc(cfg%sw)), offset_of(b, c_loc(cfg%sc)), &
             offset_of(b, c_loc(cfg%sv)), offset_of(b, c_loc(cfg%a)), &
             offset_of(b, c_loc(cfg%qw)), offset_of(b, c_loc(cfg%qv))]
    call check(c_sizeof(cfg) == c_size, 'sizeof(koala_config) matches C')
    call check(all(f_off == c_off), 'every koala_config field offset matches C')

    c_size = ref_info_layout(c_off(1:9))
    b = c_loc(info)
    f_off(1:9) = [offset_of(b, c_loc(info%struct_size)), offset_of(b, c_loc(info%steps)), &
                  offset_of(b, c_loc(info%skipped_steps)), offset_of(b, c_loc(info%sigma)), &
                  offset_of(b, c_loc(info%p00)), offset_of(b, c_loc(info%p01)), &
                  offset_of(b, c_loc(info%p11)), offset_of(b, c_loc(info%r)), &
                  offset_of(b, c_loc(info%qw))]
    call check(c_sizeof(info) == c_size, 'sizeof(koala_info) matches C')
    call check(all(f_off(1:9) == c_off(1:9)), 'every koala_info field offset matches C')
    call check(koala_version() == KOALA_VERSION_NUMBER, 'koala_version() equals the module''s version')
  end subroutine test_layout

  subroutine test_defaults()
    type(koala_config) :: cfg
    call koala_config_init(cfg, KOALA_MOMENTUM)
    call check(cfg%struct_size == c_sizeof(cfg) .and. cfg%method == KOALA_MOMENTUM, &
               'koala_config_init sets struct_size and method')
    ! The defaults documented in koala.h.
    call check(cfg%lr == 1.0d0 .and. cfg%weight_decay == 0.0d0 .and. ieee_is_nan(cfg%r) .and. &
               cfg%alpha_r == 0.9d0 .and. cfg%sigma == 1.0d0 .and. cfg%q == 1.0d0 .and. &
               cfg%sw == 0.1d0 .and. cfg%sc == 0.0d0 .and. cfg%sv == 0.1d0 .and. &
               cfg%a == 0.9d0 .and. cfg%qw == 0.01d0 .and. cfg%qv == 0.01d0, &
               'koala_config_init gives the documented defaults')
  end subroutine test_defaults

  ! One predict/update of KOALA-V on three float64 tensors (the third without
  ! a gradient), with weight decay, lr /= 1 and the online R, against
  ! ALGORITHM.md §3.2-3.3 written out here.
  subroutine test_vanilla_step_against_formula()
    type(koala_config) :: cfg
    type(koala_info) :: info
    type(koala_tensor_list) :: params, grads
    type(c_ptr) :: opt
    real(c_double), target :: x1(5), x2(3), x3(2), g1(5), g2(3), g3(2)
    real(c_double) :: e1(5), e2(3), e3(2)
    real(c_double) :: loss, loss_var, sig_hat, r_new, h2, s1, s2, c, sigma_expected
    integer(c_int) :: st
    integer :: i

    x1 = [(0.3d0 * i - 0.7d0, i = 1, 5)]
    x2 = [0.25d0, -1.5d0, 0.75d0]
    x3 = [2.0d0, -2.0d0]
    g1 = [(0.1d0 * i * (-1)**i, i = 1, 5)]
    g2 = [0.02d0, 0.5d0, -0.3d0]
    g3 = 0
    loss = 0.8d0
    loss_var = 0.9d0

    call koala_config_init(cfg, KOALA_VANILLA)
    cfg%sigma = 0.5d0
    cfg%q = 0.25d0
    cfg%lr = 0.7d0
    cfg%weight_decay = 0.01d0

    ! Independent float64 reference.
    e1 = x1; e2 = x2; e3 = x3
    sig_hat = cfg%sigma + cfg%q
    r_new = 0.9d0 * 1.0d0 + 0.1d0 * loss_var
    h2 = sum((g1 + cfg%weight_decay * x1)**2)
    s1 = sig_hat * h2 + r_new
    c = cfg%lr * (loss + 0.5d0 * cfg%weight_decay * sum(x1**2)) * sig_hat / s1
    e1 = x1 - c * g1
    h2 = sum((g2 + cfg%weight_decay * x2)**2)
    s2 = sig_hat * h2 + r_new
    c = cfg%lr * (loss + 0.5d0 * cfg%weight_decay * sum(x2**2)) * sig_hat / s2
    e2 = x2 - c * g2
    sigma_expected = sig_hat * min(r_new / s1, r_new / s2)

    call params%add(x1); call params%add(x2); call params%add(x3)
    call grads%add(g1); call grads%add(g2); call grads%add_absent(2_c_size_t)
    st = koala_create(cfg, params, KOALA_HOST, opt)
    call check(st == KOALA_OK, 'koala_create from a float64 tensor list')
    st = koala_predict(opt, params)
    call check(st == KOALA_OK, 'koala_predict (tensor list)')
    st = koala_get_info(opt, info)
    call check(st == KOALA_OK .and. close_rel(info%sigma, sig_hat, 1d-15), &
               'after predict, info%sigma = sigma + q')
    st = koala_update(opt, loss, loss_var, params, grads)
    call check(st == KOALA_OK, 'koala_update (tensor lists, one absent gradient)')
    call check(all(abs(x1 - e1) <= 1d-14 * maxval(abs(e1))) .and. &
               all(abs(x2 - e2) <= 1d-14 * maxval(abs(e2))), &
               'KOALA-V float64 step equals ALGORITHM.md §3.3 (rel 1e-14)')
    call check(all(x3 == e3), 'a tensor without gradient is left alone')
    st = koala_get_info(opt, info)
    call check(st == KOALA_OK .and. close_rel(info%sigma, sigma_expected, 1d-13) .and. &
               close_rel(info%r, r_new, 1d-15) .and. info%steps == 1, &
               'info after the step: sigma, online R and steps as ALGORITHM.md §3.3')
    call koala_destroy(opt)
  end subroutine test_vanilla_step_against_formula

  ! Deterministic inputs shared by the Fortran run and the C run.
  subroutine make_inputs(steps, x1, x2, g1, g2, loss, loss_var)
    integer, intent(in) :: steps
    real(c_float), intent(out) :: x1(:), x2(:), g1(:), g2(:)
    real(c_double), intent(out) :: loss(:), loss_var(:)
    integer :: i
    x1 = [(real(sin(0.37d0 * i), c_float), i = 1, size(x1))]
    x2 = [(real(cos(1.1d0 * i) * 0.5d0, c_float), i = 1, size(x2))]
    g1 = [(real(0.2d0 * sin(0.91d0 * i + 0.3d0), c_float), i = 1, size(g1))]
    g2 = [(real(0.1d0 * cos(0.53d0 * i), c_float), i = 1, size(g2))]
    loss = [(1.0d0 / i, i = 1, steps)]
    loss_var = [(1.5d0 / i**2, i = 1, steps)]
  end subroutine make_inputs

  subroutine test_same_as_c(method, name)
    integer(c_int), intent(in) :: method
    character(len=*), intent(in) :: name
    integer, parameter :: n1 = 7, n2 = 4, steps = 3
    real(c_float), target :: x1(n1), x2(n2), g1(n1 * steps), g2(n2 * steps)
    real(c_float) :: c1(n1), c2(n2), x1_start(n1)
    real(c_double) :: loss(steps), loss_var(steps)
    type(koala_config) :: cfg
    type(koala_info) :: info, c_info
    type(koala_tensor_list) :: params, grads
    type(c_ptr) :: opt
    integer(c_int) :: st
    integer :: k
    logical :: all_ok

    call make_inputs(steps, x1, x2, g1, g2, loss, loss_var)
    c1 = x1
    c2 = x2
    x1_start = x1
    st = ref_run_f32(method, steps, int(n1, c_size_t), int(n2, c_size_t), c1, c2, g1, g2, &
                     loss, loss_var, c_info)
    call check(st == KOALA_OK, name // ': C reference run succeeded')

    call koala_config_init(cfg, method)
    call params%add(x1)
    call params%add(x2)
    st = koala_create(cfg, params, KOALA_HOST, opt)
    all_ok = st == KOALA_OK
    do k = 1, steps
       call grads%clear()
       call grads%add(g1((k - 1) * n1 + 1:k * n1))
       call grads%add(g2((k - 1) * n2 + 1:k * n2))
       st = koala_predict(opt, params)
       all_ok = all_ok .and. st == KOALA_OK
       st = koala_update(opt, loss(k), loss_var(k), params, grads)
       all_ok = all_ok .and. st == KOALA_OK
    end do
    call check(all_ok, name // ': 3 steps through the Fortran wrappers succeeded')
    call check(all(x1 == c1) .and. all(x2 == c2), &
               name // ': float32 parameters bit-identical to the C ABI run')
    call check(all(abs(x1 - x1_start) > 0), &
               name // ': the parameters did move')
    st = koala_get_info(opt, info)
    call check(st == KOALA_OK .and. info%steps == 3 .and. info%sigma == c_info%sigma .and. &
               info%p00 == c_info%p00 .and. info%p01 == c_info%p01 .and. &
               info%p11 == c_info%p11 .and. info%r == c_info%r .and. info%qw == c_info%qw, &
               name // ': koala_info equals the C run''s')
    call koala_destroy(opt)
  end subroutine test_same_as_c

  ! Save after one step, take a second step, load, retake it: the same numbers.
  subroutine test_checkpoint_round_trip()
    integer, parameter :: n1 = 6, n2 = 3, steps = 2
    real(c_float), target :: x1(n1), x2(n2), g1(n1 * steps), g2(n2 * steps)
    real(c_float) :: a1(n1), a2(n2), saved1(n1), saved2(n2)
    real(c_double) :: loss(steps), loss_var(steps)
    integer(c_int8_t), allocatable :: bytes(:)
    integer(c_size_t) :: nbytes
    type(koala_config) :: cfg
    type(koala_tensor_list) :: params, grads2
    type(c_ptr) :: opt
    integer(c_int) :: st

    call make_inputs(steps, x1, x2, g1, g2, loss, loss_var)
    call koala_config_init(cfg, KOALA_MOMENTUM)
    call params%add(x1)
    call params%add(x2)
    call grads2%add(g1(n1 + 1:))
    call grads2%add(g2(n2 + 1:))
    st = koala_create(cfg, params, KOALA_HOST, opt)
    st = koala_predict(opt, params)
    st = koala_update(opt, loss(1), loss_var(1), params, grads2)
    st = koala_state_save(opt, bytes)
    call check(st == KOALA_OK, 'koala_state_save into an allocatable byte array')
    st = koala_state_size(opt, nbytes)
    call check(st == KOALA_OK .and. nbytes == size(bytes, kind=c_size_t), &
               'the saved array has koala_state_size bytes')
    saved1 = x1; saved2 = x2
    st = koala_predict(opt, params)
    st = koala_update(opt, loss(2), loss_var(2), params, grads2)
    a1 = x1; a2 = x2
    x1 = saved1; x2 = saved2
    st = koala_state_load(opt, bytes)
    call check(st == KOALA_OK, 'koala_state_load')
    st = koala_predict(opt, params)
    st = koala_update(opt, loss(2), loss_var(2), params, grads2)
    call check(st == KOALA_OK .and. all(x1 == a1) .and. all(x2 == a2), &
               'after load, the repeated step is bit-identical')
    bytes(size(bytes) / 2) = not(bytes(size(bytes) / 2))
    st = koala_state_load(opt, bytes)
    call check(st == KOALA_ERROR_BAD_STATE, 'a corrupted checkpoint is KOALA_ERROR_BAD_STATE')
    call koala_destroy(opt)
  end subroutine test_checkpoint_round_trip

  subroutine test_errors()
    type(koala_config) :: cfg
    type(koala_tensor_list) :: params, grads, mixed
    real(c_float), target :: x(4), g(4), x_before(4)
    real(c_double), target :: y(2)
    type(c_ptr) :: opt
    integer(c_int) :: st
    character(len=:), allocatable :: msg

    x = [1.0, 2.0, 3.0, 4.0]
    g = [0.5, -0.5, 0.25, 1.0]
    y = 1
    call params%add(x)
    call grads%add(g)

    call koala_config_init(cfg, KOALA_VANILLA)
    cfg%alpha_r = 1.5d0
    st = koala_create(cfg, params, KOALA_HOST, opt)
    msg = koala_last_error()
    call check(st == KOALA_ERROR_INVALID_ARGUMENT .and. .not. c_associated(opt), &
               'alpha_r = 1.5 is KOALA_ERROR_INVALID_ARGUMENT and no handle')
    call check(index(msg, 'alpha_r') > 0, 'the message names alpha_r: "' // msg // '"')
    call check(index(koala_status_string(st), 'KOALA_ERROR_INVALID_ARGUMENT') == 1, &
               'koala_status_string: "' // koala_status_string(st) // '"')

    call mixed%add(x)
    call mixed%add(y)
    call koala_config_init(cfg, KOALA_VANILLA)
    st = koala_create(cfg, mixed, KOALA_HOST, opt)
    msg = koala_last_error()
    call check(st == KOALA_ERROR_INVALID_ARGUMENT .and. index(msg, 'dtype') > 0, &
               'a list mixing float32 and float64 is rejected naming dtype: "' // msg // '"')

    st = koala_create(cfg, params, KOALA_HOST, opt)
    st = koala_update(opt, 1.0d0, 1.0d0, params, grads)
    msg = koala_last_error()
    call check(st == KOALA_ERROR_BAD_STATE .and. index(msg, 'predict') > 0, &
               'update before predict is KOALA_ERROR_BAD_STATE')
    st = koala_predict(opt, params)
    x_before = x
    st = koala_update(opt, ieee_value(1.0d0, ieee_quiet_nan), 1.0d0, params, grads)
    call check(st == KOALA_ERROR_NOT_FINITE .and. all(x == x_before), &
               'a NaN loss is KOALA_ERROR_NOT_FINITE and changes nothing')
    st = koala_set_lr(opt, -1.0d0)
    msg = koala_last_error()
    call check(st == KOALA_ERROR_INVALID_ARGUMENT .and. index(msg, 'lr') > 0, &
               'koala_set_lr(-1) is rejected naming lr')
    st = koala_predict(opt, params, c_loc(x))
    msg = koala_last_error()
    call check(st == KOALA_ERROR_INVALID_ARGUMENT .and. index(msg, 'stream') > 0, &
               'a stream for a host optimizer is rejected naming stream')
    call koala_destroy(opt)
    call koala_destroy(c_null_ptr)
  end subroutine test_errors

  ! koala_update_ptr reads the two losses from memory (host memory here; the
  ! device path is the same call with device addresses): same result as
  ! koala_update with the values.
  subroutine test_update_ptr()
    type(koala_config) :: cfg
    type(koala_tensor_list) :: pa, pb, grads
    real(c_float), target :: xa(3), xb(3), g(3)
    real(c_double), target :: loss, loss_var
    type(c_ptr) :: opt_a, opt_b
    integer(c_int) :: st_a, st_b

    xa = [0.5, -1.0, 2.0]
    xb = xa
    g = [0.25, 0.5, -0.125]
    loss = 0.75d0
    loss_var = 0.6d0
    call koala_config_init(cfg, KOALA_MOMENTUM)
    call pa%add(xa); call pb%add(xb); call grads%add(g)
    st_a = koala_create(cfg, pa, KOALA_HOST, opt_a)
    st_b = koala_create(cfg, pb, KOALA_HOST, opt_b)
    st_a = koala_predict(opt_a, pa)
    st_b = koala_predict(opt_b, pb)
    st_a = koala_update(opt_a, loss, loss_var, pa, grads)
    st_b = koala_update_ptr(opt_b, c_loc(loss), c_loc(loss_var), KOALA_FLOAT64, pb, grads)
    call check(st_a == KOALA_OK .and. st_b == KOALA_OK .and. all(xa == xb) .and. &
               any(xa /= [0.5, -1.0, 2.0]), 'koala_update_ptr equals koala_update')
    call koala_destroy(opt_a)
    call koala_destroy(opt_b)
  end subroutine test_update_ptr

end program test_koala

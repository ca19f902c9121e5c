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
! - three KOALA++ float32 steps likewise, and two KOALA++ float64 steps
!   against ALGORITHM.md §7.2-7.3 evaluated here (the first visit and the
!   recursion in v, alpha, lambda, w);
! - 1.1: a 1.1 config field is honoured (sized init), per-tensor lr and
!   weight decay, the posterior of a fused KOALA-M, caller-owned state,
!   sharding by the two-phase update (two "processes" in one) and by the
!   all-reduce callback (including a failing one);
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

  ! ok = ok .and. status == KOALA_OK, with the call always made (in
  ! `ok .and. f()` Fortran may skip f).
  subroutine need(ok, status)
    logical, intent(inout) :: ok
    integer(c_int), intent(in) :: status
    ok = ok .and. status == 0
  end subroutine need

  logical function close_rel(a, b, tol)
    real(c_double), intent(in) :: a, b, tol
    close_rel = abs(a - b) <= tol * max(abs(a), abs(b), 1e-300_c_double)
  end function close_rel

  ! All-reduce callbacks (procedure(koala_allreduce_fn)) for one process:
  ! the sum over a group of one is the buffer itself. The first counts its
  ! calls and the doubles it was handed, the second fails.
  integer(c_int) function counting_allreduce(buf, count, stream, user) bind(C) result(status)
    real(c_double), intent(inout) :: buf(*)
    integer(c_size_t), value :: count
    type(c_ptr), value :: stream, user
    integer(c_size_t), pointer :: calls(:)
    call c_f_pointer(user, calls, [2])
    calls(1) = calls(1) + 1
    calls(2) = count
    if (c_associated(stream) .or. .not. (buf(1) == buf(1))) then
       status = 2                  ! a host optimizer passes no stream; NaN sums are unexpected
    else
       status = 0
    end if
  end function counting_allreduce

  integer(c_int) function failing_allreduce(buf, count, stream, user) bind(C) result(status)
    real(c_double), intent(inout) :: buf(*)
    integer(c_size_t), value :: count
    type(c_ptr), value :: stream, user
    buf(1:count) = -1            ! scribbles: the library must not use the buffer
    status = 1
    if (c_associated(stream) .or. c_associated(user)) status = 3
  end function failing_allreduce
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
       integer(c_size_t), intent(out) :: offsets(20)
       integer(c_size_t) :: n
     end function ref_config_layout
     function ref_info_layout(offsets) bind(C) result(n)
       import :: c_size_t
       integer(c_size_t), intent(out) :: offsets(12)
       integer(c_size_t) :: n
     end function ref_info_layout
     function ref_shard_layout(offsets) bind(C) result(n)
       import :: c_size_t
       integer(c_size_t), intent(out) :: offsets(6)
       integer(c_size_t) :: n
     end function ref_shard_layout
     subroutine ref_constants(out) bind(C)
       import :: c_size_t
       integer(c_size_t), intent(out) :: out(3)
     end subroutine ref_constants
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
  call test_same_as_c(KOALA_PLUSPLUS, 'KOALA++')
  call test_plusplus_steps_against_formula()
  call test_new_config_field_is_honoured()
  call test_tensor_lr_and_weight_decay()
  call test_posterior()
  call test_caller_state()
  call test_two_phase_sharded()
  call test_allreduce_callback()
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
    type(koala_shard), target :: shard
    integer(c_size_t) :: c_off(20), f_off(20), c_size, consts(3)
    type(c_ptr) :: b

    c_size = ref_config_layout(c_off)
    b = c_loc(cfg)
    f_off = [offset_of(b, c_loc(cfg%struct_size)), offset_of(b, c_loc(cfg%method)), &
             offset_of(b, c_loc(cfg%lr)), offset_of(b, c_loc(cfg%weight_decay)), &
             offset_of(b, c_loc(cfg%r)), offset_of(b, c_loc(cfg%alpha_r)), &
             offset_of(b, c_loc(cfg%sigma)), offset_of(b, c_loc(cfg%q)), &
             offset_of(b, c_loc(cfg%sw)), offset_of(b, c_loc(cfg%sc)), &
             offset_of(b, c_loc(cfg%sv)), offset_of(b, c_loc(cfg%a)), &
             offset_of(b, c_loc(cfg%qw)), offset_of(b, c_loc(cfg%qv)), &
             offset_of(b, c_loc(cfg%threads)), offset_of(b, c_loc(cfg%stochastic_rounding)), &
             offset_of(b, c_loc(cfg%seed)), offset_of(b, c_loc(cfg%asymmetric)), &
             offset_of(b, c_loc(cfg%fused_predict)), offset_of(b, c_loc(cfg%caller_state))]
    call check(c_sizeof(cfg) == c_size, 'sizeof(koala_config) matches C')
    call check(all(f_off == c_off), 'every koala_config field offset (1.0 and 1.1) matches C')

    c_size = ref_info_layout(c_off(1:12))
    b = c_loc(info)
    f_off(1:12) = [offset_of(b, c_loc(info%struct_size)), offset_of(b, c_loc(info%steps)), &
                   offset_of(b, c_loc(info%skipped_steps)), offset_of(b, c_loc(info%sigma)), &
                   offset_of(b, c_loc(info%p00)), offset_of(b, c_loc(info%p01)), &
                   offset_of(b, c_loc(info%p11)), offset_of(b, c_loc(info%r)), &
                   offset_of(b, c_loc(info%qw)), offset_of(b, c_loc(info%lr)), &
                   offset_of(b, c_loc(info%threads)), offset_of(b, c_loc(info%phase))]
    call check(c_sizeof(info) == c_size, 'sizeof(koala_info) matches C')
    call check(all(f_off(1:12) == c_off(1:12)), 'every koala_info field offset (1.0 and 1.1) matches C')

    c_size = ref_shard_layout(c_off(1:6))
    b = c_loc(shard)
    f_off(1:6) = [offset_of(b, c_loc(shard%struct_size)), offset_of(b, c_loc(shard%n_global)), &
                  offset_of(b, c_loc(shard%global_index)), &
                  offset_of(b, c_loc(shard%global_elements)), &
                  offset_of(b, c_loc(shard%allreduce)), offset_of(b, c_loc(shard%user))]
    call check(c_sizeof(shard) == c_size, 'sizeof(koala_shard) matches C')
    call check(all(f_off(1:6) == c_off(1:6)), 'every koala_shard field offset matches C')

    call ref_constants(consts)
    call check(KOALA_CONFIG_SIZE_1_0 == consts(1) .and. KOALA_INFO_SIZE_1_0 == consts(2) .and. &
               KOALA_SCALAR_LR_SCALE == consts(3), &
               'KOALA_CONFIG_SIZE_1_0, KOALA_INFO_SIZE_1_0, KOALA_SCALAR_LR_SCALE match koala.h')
    call check(koala_version() == KOALA_VERSION_NUMBER .and. KOALA_VERSION_NUMBER == 10100, &
               'koala_version() equals the module''s version (10100)')
  end subroutine test_layout

  subroutine test_defaults()
    type(koala_config) :: cfg
    call koala_config_init(cfg, KOALA_MOMENTUM)
    call check(cfg%struct_size == c_sizeof(cfg) .and. cfg%method == KOALA_MOMENTUM, &
               'koala_config_init sets struct_size (the whole 1.1 struct) and method')
    ! The defaults documented in koala.h.
    call check(cfg%lr == 1.0d0 .and. cfg%weight_decay == 0.0d0 .and. ieee_is_nan(cfg%r) .and. &
               cfg%alpha_r == 0.9d0 .and. cfg%sigma == 1.0d0 .and. cfg%q == 1.0d0 .and. &
               cfg%sw == 0.1d0 .and. cfg%sc == 0.0d0 .and. cfg%sv == 0.1d0 .and. &
               cfg%a == 0.9d0 .and. cfg%qw == 0.01d0 .and. cfg%qv == 0.01d0, &
               'koala_config_init gives the documented defaults')
    cfg%threads = 7; cfg%seed = 9; cfg%caller_state = 1
    call koala_config_init(cfg, KOALA_PLUSPLUS)
    call check(cfg%method == KOALA_PLUSPLUS .and. cfg%threads == 0 .and. &
               cfg%stochastic_rounding == 0 .and. cfg%seed == 0 .and. cfg%asymmetric == 0 .and. &
               cfg%fused_predict == 0 .and. cfg%caller_state == 0, &
               'the 1.1 fields are initialised to 0 (the default behaviour)')
    call check(cfg%sigma == 1.0d0 .and. cfg%q == 1.0d0 .and. ieee_is_nan(cfg%r) .and. &
               cfg%alpha_r == 0.9d0 .and. cfg%lr == 1.0d0 .and. cfg%weight_decay == 0.0d0, &
               'KOALA++ defaults are koalap.py''s (sigma 1, q 1, online R, alpha_r 0.9, lr 1)')
  end subroutine test_defaults

  ! The sized init must cover the 1.1 fields: a thread count set in the
  ! config reaches the optimizer (with the exported 1.0 init, struct_size
  ! would end before `threads` and the library would use its default).
  subroutine test_new_config_field_is_honoured()
    type(koala_config) :: cfg
    type(koala_info) :: info
    type(koala_tensor_list) :: params
    real(c_float), target :: x(8)
    type(c_ptr) :: opt
    integer(c_int) :: st
    integer :: want
    character(len=:), allocatable :: msg
    x = 1
    call params%add(x)
    do want = 1, 3, 2
       call koala_config_init(cfg, KOALA_VANILLA)
       cfg%threads = want
       st = koala_create(cfg, params, KOALA_HOST, opt)
       st = koala_get_info(opt, info)
       call check(st == KOALA_OK .and. info%threads == want .and. info%phase == 0 .and. &
                  info%lr == 1.0d0, 'cfg%threads is honoured (info%threads == cfg%threads)')
       call koala_destroy(opt)
    end do
    cfg%threads = -1
    st = koala_create(cfg, params, KOALA_HOST, opt)
    msg = koala_last_error()
    call check(st == KOALA_ERROR_INVALID_ARGUMENT .and. index(msg, 'threads') > 0, &
               'cfg%threads = -1 is rejected naming threads')
  end subroutine test_new_config_field_is_honoured

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

  ! KOALA++ on float64 data, three steps, against ALGORITHM.md §7.2-7.3
  ! written out here: three tensors (the third without gradient in step 1:
  ! its first visit is step 2), weight decay, lr 0.8, sigma 0.5, q 0.3,
  ! online R. After a first visit v is parallel to H, so w_k = 0 in the step
  ! after it; step 3 is the first where every term of v_k counts.
  subroutine test_plusplus_steps_against_formula()
    integer, parameter :: nt = 3, nmax = 5
    integer, parameter :: n(nt) = [5, 3, 2]
    type(koala_config) :: cfg
    type(koala_info) :: info
    type(koala_tensor_list) :: params, grads
    type(c_ptr) :: opt
    real(c_double), target :: x1(5), x2(3), x3(2), g1(5), g2(3), g3(2)
    real(c_double) :: e(nmax, nt), g(nmax, nt), v_prev(nmax, nt), h_prev(nmax, nt), s_prev(nt)
    real(c_double) :: h(nmax), v(nmax), lossk(3), loss_vark(3), r, wd, q, sig0, lr
    real(c_double) :: alpha, lam, w, hh, hp2, s, cal_l, err, w_seen
    logical :: visited(nt), has_grad(nt, 3)
    integer(c_int) :: st
    integer :: i, k, t, m
    logical :: ok

    call koala_config_init(cfg, KOALA_PLUSPLUS)
    sig0 = 0.5d0; q = 0.3d0; lr = 0.8d0; wd = 0.02d0
    cfg%sigma = sig0; cfg%q = q; cfg%lr = lr; cfg%weight_decay = wd
    x1 = [(0.3d0 * i - 0.7d0, i = 1, 5)]
    x2 = [0.25d0, -1.5d0, 0.75d0]
    x3 = [2.0d0, -1.0d0]
    lossk = [0.8d0, 0.6d0, 0.7d0]
    loss_vark = [0.9d0, 0.5d0, 0.6d0]
    has_grad(:, 1) = [.true., .true., .false.]
    has_grad(:, 2:3) = .true.

    e = 0
    e(1:5, 1) = x1; e(1:3, 2) = x2; e(1:2, 3) = x3
    visited = .false.
    r = 1.0d0
    call params%add(x1); call params%add(x2); call params%add(x3)
    st = koala_create(cfg, params, KOALA_HOST, opt)
    ok = st == KOALA_OK
    do k = 1, 3
       ! this step's gradients (deterministic)
       g = 0
       do t = 1, nt
          do i = 1, n(t)
             g(i, t) = 0.1d0 * sin(1.3d0 * i + 0.7d0 * t + 2.1d0 * k)
          end do
       end do
       g1 = g(1:5, 1); g2 = g(1:3, 2); g3 = g(1:2, 3)
       call grads%clear()
       call grads%add(g1); call grads%add(g2)
       if (has_grad(3, k)) then
          call grads%add(g3)
       else
          call grads%add_absent(2_c_size_t)
       end if
       st = koala_predict(opt, params)
       ok = ok .and. st == KOALA_OK
       st = koala_update(opt, lossk(k), loss_vark(k), params, grads)
       ok = ok .and. st == KOALA_OK

       ! the reference step
       w_seen = 0
       r = 0.9d0 * r + 0.1d0 * loss_vark(k)
       do t = 1, nt
          if (.not. has_grad(t, k)) cycle
          m = n(t)
          h(1:m) = g(1:m, t) + wd * e(1:m, t)
          cal_l = lossk(k) + 0.5d0 * wd * sum(e(1:m, t)**2)
          if (.not. visited(t)) then
             v_prev(1:m, t) = sig0 * h(1:m)
             h_prev(1:m, t) = h(1:m)
             s_prev(t) = dot_product(h(1:m), v_prev(1:m, t)) + q * sum(h(1:m)**2) + r
             visited(t) = .true.
          end if
          hh = dot_product(h(1:m), h_prev(1:m, t))
          hp2 = sum(h_prev(1:m, t)**2)
          alpha = hh / hp2
          lam = dot_product(h(1:m), v_prev(1:m, t) + q * h_prev(1:m, t)) / s_prev(t)
          w = (dot_product(h(1:m), v_prev(1:m, t)) * hp2 - &
               dot_product(h_prev(1:m, t), v_prev(1:m, t)) * hh) / hp2**2
          v(1:m) = (alpha - lam) * v_prev(1:m, t) + q * (h(1:m) - lam * h_prev(1:m, t)) + &
                   w * h_prev(1:m, t)
          s = dot_product(h(1:m), v(1:m)) + q * sum(h(1:m)**2) + r
          e(1:m, t) = e(1:m, t) - lr * cal_l * (v(1:m) + q * h(1:m)) / s
          w_seen = max(w_seen, abs(w) * sqrt(hp2) / sqrt(sum(v(1:m)**2)))
          v_prev(1:m, t) = v(1:m)
          h_prev(1:m, t) = h(1:m)
          s_prev(t) = s
       end do
       err = max(maxval(abs(x1 - e(1:5, 1))) / maxval(abs(e(1:5, 1))), &
                 maxval(abs(x2 - e(1:3, 2))) / maxval(abs(e(1:3, 2))), &
                 maxval(abs(x3 - e(1:2, 3))) / maxval(abs(e(1:2, 3))))
       select case (k)
       case (1)
          call check(ok .and. err <= 1d-14 .and. all(x3 == [2.0d0, -1.0d0]), &
                     'KOALA++ float64 step 1 (first visit) equals ALGORITHM.md §7.3 (rel 1e-14); ' // &
                     'a tensor without gradient is left alone')
       case (2)
          call check(ok .and. err <= 1d-13 .and. any(x3 /= [2.0d0, -1.0d0]), &
                     'KOALA++ float64 step 2 (alpha, lambda; tensor 3 first visit) equals ' // &
                     'ALGORITHM.md §7.2 (rel 1e-13)')
       case default
          call check(ok .and. err <= 1d-13 .and. w_seen > 1d-3, &
                     'KOALA++ float64 step 3 (the symmetric w_k term) equals ALGORITHM.md §7.2 ' // &
                     '(rel 1e-13)')
       end select
    end do
    st = koala_get_info(opt, info)
    call check(st == KOALA_OK .and. info%steps == 3 .and. close_rel(info%r, r, 1d-15), &
               'KOALA++ info: steps and the online R')
    call koala_destroy(opt)
  end subroutine test_plusplus_steps_against_formula

  ! One KOALA-V step of two float64 tensors with the given config changes
  ! and optional per-tensor lr / weight decay; returns the parameters.
  subroutine vanilla_step(cfg, scale, wds, y1, y2, status)
    type(koala_config), intent(in) :: cfg
    real(c_double), intent(in), optional :: scale(:), wds(:)
    real(c_double), intent(out) :: y1(4), y2(3)
    integer(c_int), intent(out) :: status
    real(c_double), target :: x1(4), x2(3), g1(4), g2(3)
    type(koala_tensor_list) :: params, grads
    type(c_ptr) :: opt
    integer(c_int) :: st
    x1 = [-0.4d0, -0.1d0, 0.2d0, 0.5d0]; x2 = [0.25d0, -1.5d0, 0.75d0]
    g1 = [-0.1d0, 0.2d0, -0.3d0, 0.4d0]; g2 = [0.02d0, 0.5d0, -0.3d0]
    call params%add(x1); call params%add(x2); call grads%add(g1); call grads%add(g2)
    status = koala_create(cfg, params, KOALA_HOST, opt)
    if (status /= KOALA_OK) return
    if (present(scale)) then
       st = koala_set_tensor_lr(opt, scale)
       if (st /= KOALA_OK) status = st
    end if
    if (present(wds)) then
       st = koala_set_tensor_weight_decay(opt, wds)
       if (st /= KOALA_OK) status = st
    end if
    st = koala_predict(opt, params)
    if (st /= KOALA_OK) status = st
    st = koala_update(opt, 0.8d0, 0.9d0, params, grads)
    if (st /= KOALA_OK) status = st
    y1 = x1; y2 = x2
    call koala_destroy(opt)
  end subroutine vanilla_step

  ! KOALA-V's step of tensor i depends only on its own lr and weight decay
  ! (ALGORITHM.md §3.3), so per-tensor values must give each tensor the
  ! result of a run where the config holds that tensor's value.
  subroutine test_tensor_lr_and_weight_decay()
    type(koala_config) :: cfg
    real(c_double) :: a1(4), a2(3), b1(4), b2(3), c1(4), c2(3), d1(4), d2(3)
    type(koala_tensor_list) :: params
    real(c_double), target :: x(3)
    type(c_ptr) :: opt
    integer(c_int) :: st, st_b, st_c
    character(len=:), allocatable :: msg

    call koala_config_init(cfg, KOALA_VANILLA)
    call vanilla_step(cfg, [0.5d0, 0.25d0], status=st, y1=a1, y2=a2)
    cfg%lr = 0.5d0
    call vanilla_step(cfg, status=st_b, y1=b1, y2=b2)
    cfg%lr = 0.25d0
    call vanilla_step(cfg, status=st_c, y1=c1, y2=c2)
    call check(st == KOALA_OK .and. st_b == KOALA_OK .and. st_c == KOALA_OK .and. &
               all(abs(a1 - b1) <= 1d-15 * maxval(abs(b1))) .and. &
               all(abs(a2 - c2) <= 1d-15 * maxval(abs(c2))) .and. any(a1 /= c1), &
               'koala_set_tensor_lr: tensor i steps with cfg%lr * scale(i)')

    call koala_config_init(cfg, KOALA_VANILLA)
    call vanilla_step(cfg, wds=[0.05d0, 0.0d0], status=st, y1=a1, y2=a2)
    cfg%weight_decay = 0.05d0
    call vanilla_step(cfg, status=st_b, y1=b1, y2=b2)
    cfg%weight_decay = 0
    call vanilla_step(cfg, status=st_c, y1=c1, y2=c2)
    call check(st == KOALA_OK .and. all(abs(a1 - b1) <= 1d-15 * maxval(abs(b1))) .and. &
               all(abs(a2 - c2) <= 1d-15 * maxval(abs(c2))) .and. any(a1 /= c1), &
               'koala_set_tensor_weight_decay: tensor i uses weight_decay(i)')

    ! absent = restore the defaults: the same as never setting anything
    call koala_config_init(cfg, KOALA_VANILLA)
    call vanilla_step(cfg, status=st, y1=c1, y2=c2)
    x = 1
    call params%add(x); call params%add(x(1:2))
    st = koala_create(cfg, params, KOALA_HOST, opt)
    st = koala_set_tensor_lr(opt, [0.5d0, -1.0d0])
    msg = koala_last_error()
    call check(st == KOALA_ERROR_INVALID_ARGUMENT .and. index(msg, 'scale') > 0, &
               'a negative lr scale is rejected naming scale: "' // msg // '"')
    st = koala_set_tensor_weight_decay(opt, [0.5d0, ieee_value(1.0d0, ieee_quiet_nan)])
    msg = koala_last_error()
    call check(st == KOALA_ERROR_INVALID_ARGUMENT .and. index(msg, 'weight_decay') > 0, &
               'a NaN weight decay is rejected naming weight_decay')
    st = koala_set_tensor_lr(opt)
    st_b = koala_set_tensor_weight_decay(opt)
    call check(st == KOALA_OK .and. st_b == KOALA_OK, &
               'no array (NULL) restores the defaults')
    call koala_destroy(opt)
    call koala_config_init(cfg, KOALA_VANILLA)
    call vanilla_step(cfg, [2.0d0, 3.0d0], [0.1d0, 0.1d0], d1, d2, st)
    call check(st == KOALA_OK .and. any(d1 /= c1), 'per-tensor values change the step')
  end subroutine test_tensor_lr_and_weight_decay

  ! A fused KOALA-M leaves the next prediction in the parameters; its
  ! posterior equals the parameters of the unfused run after the update.
  subroutine test_posterior()
    integer, parameter :: n1 = 7, n2 = 4, steps = 3
    real(c_float), target :: x1(n1), x2(n2), y1(n1), y2(n2), g1(n1 * steps), g2(n2 * steps)
    real(c_float), target :: p1(n1), p2(n2)
    real(c_double) :: loss(steps), loss_var(steps)
    type(koala_config) :: cfg
    type(koala_tensor_list) :: px, py, post, grads
    type(c_ptr) :: opt_x, opt_y
    integer(c_int) :: st, st_between
    integer :: k
    logical :: ok, close_all

    call make_inputs(steps, x1, x2, g1, g2, loss, loss_var)
    y1 = x1; y2 = x2
    call koala_config_init(cfg, KOALA_MOMENTUM)
    call px%add(x1); call px%add(x2)
    call py%add(y1); call py%add(y2)
    call post%add(p1); call post%add(p2)
    ok = .true.
    call need(ok, koala_create(cfg, px, KOALA_HOST, opt_x))
    cfg%fused_predict = 1
    call need(ok, koala_create(cfg, py, KOALA_HOST, opt_y))
    close_all = .true.
    st_between = KOALA_OK
    do k = 1, steps
       call grads%clear()
       call grads%add(g1((k - 1) * n1 + 1:k * n1)); call grads%add(g2((k - 1) * n2 + 1:k * n2))
       call need(ok, koala_predict(opt_x, px))
       call need(ok, koala_predict(opt_y, py))
       if (k == 2) st_between = koala_posterior(opt_x, px, post)
       call need(ok, koala_update(opt_x, loss(k), loss_var(k), px, grads))
       call need(ok, koala_update(opt_y, loss(k), loss_var(k), py, grads))
       st = koala_posterior(opt_y, py, post)
       ok = ok .and. st == KOALA_OK
       close_all = close_all .and. all(abs(p1 - x1) <= 1e-6 * maxval(abs(x1))) .and. &
                   all(abs(p2 - x2) <= 1e-6 * maxval(abs(x2)))
    end do
    call check(ok .and. close_all .and. any(y1 /= x1), &
               'koala_posterior of a fused KOALA-M equals the unfused posterior (float32 rounding)')
    call check(st_between == KOALA_ERROR_BAD_STATE, &
               'koala_posterior between predict and update of KOALA-M is KOALA_ERROR_BAD_STATE')
    st = koala_posterior(opt_x, px, post)
    call check(st == KOALA_OK .and. all(p1 == x1) .and. all(p2 == x2), &
               'koala_posterior of an unfused optimizer copies the parameters')
    call koala_destroy(opt_x)
    call koala_destroy(opt_y)
  end subroutine test_posterior

  ! KOALA++ with the state in Fortran arrays (caller_state = 1): the same
  ! numbers as the library-owned run, bit for bit.
  subroutine test_caller_state()
    integer, parameter :: n1 = 7, n2 = 4, steps = 3
    real(c_float), target :: x1(n1), x2(n2), y1(n1), y2(n2), g1(n1 * steps), g2(n2 * steps)
    real(c_float), target :: v1(n1), v2(n2), hp1(n1), hp2(n2)
    real(c_double), allocatable, target :: scalars(:)
    real(c_double) :: loss(steps), loss_var(steps)
    type(koala_config) :: cfg
    type(koala_tensor_list) :: px, py, buffers, grads
    type(koala_info) :: info_x, info_y
    type(c_ptr) :: opt_x, opt_y
    integer(c_size_t) :: per_tensor, n_scalars
    integer(c_int) :: state_dtype, st
    integer :: k
    logical :: ok

    call make_inputs(steps, x1, x2, g1, g2, loss, loss_var)
    y1 = x1; y2 = x2
    call koala_config_init(cfg, KOALA_PLUSPLUS)
    call px%add(x1); call px%add(x2)
    call py%add(y1); call py%add(y2)
    ok = .true.
    call need(ok, koala_create(cfg, px, KOALA_HOST, opt_x))
    cfg%caller_state = 1
    call need(ok, koala_create(cfg, py, KOALA_HOST, opt_y))
    st = koala_state_layout(opt_y, per_tensor, state_dtype, n_scalars)
    call check(ok .and. st == KOALA_OK .and. per_tensor == 2 .and. state_dtype == KOALA_FLOAT32 &
               .and. n_scalars > KOALA_SCALAR_LR_SCALE, &
               'koala_state_layout of KOALA++ float32: 2 float32 buffers per tensor')
    st = koala_predict(opt_y, py)
    call check(st == KOALA_ERROR_BAD_STATE, 'a caller_state optimizer with nothing bound is BAD_STATE')
    allocate(scalars(n_scalars))
    ! buffer b of tensor i at position b*n_tensors + i: v1, v2, then hp1, hp2
    call buffers%add(v1); call buffers%add(v2); call buffers%add(hp1); call buffers%add(hp2)
    st = koala_state_init(opt_y, buffers, scalars)
    ok = st == KOALA_OK .and. scalars(KOALA_SCALAR_LR_SCALE + 1) == 1.0d0
    st = koala_bind_state(opt_y, buffers, scalars)
    ok = ok .and. st == KOALA_OK
    do k = 1, steps
       call grads%clear()
       call grads%add(g1((k - 1) * n1 + 1:k * n1)); call grads%add(g2((k - 1) * n2 + 1:k * n2))
       call need(ok, koala_predict(opt_x, px))
       call need(ok, koala_predict(opt_y, py))
       call need(ok, koala_update(opt_x, loss(k), loss_var(k), px, grads))
       call need(ok, koala_update(opt_y, loss(k), loss_var(k), py, grads))
    end do
    call need(ok, koala_get_info(opt_x, info_x))
    call need(ok, koala_get_info(opt_y, info_y))
    call check(ok .and. all(y1 == x1) .and. all(y2 == x2) .and. info_x%r == info_y%r .and. &
               info_y%steps == steps .and. any(v1 /= 0) .and. any(hp2 /= 0), &
               'KOALA++ on caller-owned Fortran arrays: bit-identical to the library-owned run')
    call koala_destroy(opt_x)
    call koala_destroy(opt_y)
  end subroutine test_caller_state

  ! Two "processes" in one: process A holds tensor 1 whole and the first 3
  ! elements of tensor 2, process B the other element of tensor 2 and
  ! tensor 3 whole. The two-phase update with the partial sums added here
  ! (what MPI_Allreduce would do) must give the unsharded run's numbers, up
  ! to the rounding of the sums.
  subroutine test_two_phase_sharded()
    call sharded_case(KOALA_PLUSPLUS, 'KOALA++')
    call sharded_case(KOALA_MOMENTUM, 'KOALA-M')
  end subroutine test_two_phase_sharded

  subroutine sharded_case(method, name)
    integer(c_int), intent(in) :: method
    character(len=*), intent(in) :: name
    integer, parameter :: steps = 4
    real(c_double), target :: w1(6), w2(4), w3(5), gw1(6), gw2(4), gw3(5)
    real(c_double), target :: a1(6), a2(3), b2(1), b3(5), ga1(6), ga2(3), gb2(1), gb3(5)
    real(c_double), allocatable, target :: sums_a(:), sums_b(:)
    type(koala_config) :: cfg
    type(koala_shard) :: shard
    type(koala_tensor_list) :: pw, gw, pa, ga, pb, gb
    type(koala_info) :: info_w, info_a, info_b
    type(c_ptr) :: opt_w, opt_a, opt_b
    integer(c_size_t) :: n_a, n_b, n_w
    real(c_double) :: loss, loss_var, err
    integer :: k, i
    logical :: ok

    w1 = [(0.2d0 * sin(1.0d0 * i), i = 1, 6)]
    w2 = [(0.3d0 * cos(0.7d0 * i), i = 1, 4)]
    w3 = [(0.1d0 * i - 0.25d0, i = 1, 5)]
    a1 = w1; a2 = w2(1:3); b2 = w2(4:4); b3 = w3
    call koala_config_init(cfg, method)
    cfg%weight_decay = 1d-2
    call pw%add(w1); call pw%add(w2); call pw%add(w3)
    call gw%add(gw1); call gw%add(gw2); call gw%add(gw3)
    call pa%add(a1); call pa%add(a2); call ga%add(ga1); call ga%add(ga2)
    call pb%add(b2); call pb%add(b3); call gb%add(gb2); call gb%add(gb3)
    ok = .true.
    call need(ok, koala_create(cfg, pw, KOALA_HOST, opt_w))
    shard%n_global = 3
    shard%global_elements = 15
    call need(ok, koala_create_sharded(cfg, pa, shard, KOALA_HOST, opt_a, &
                                       global_tensor=[1_c_size_t, 2_c_size_t]))
    call need(ok, koala_create_sharded(cfg, pb, shard, KOALA_HOST, opt_b, &
                                       global_tensor=[2_c_size_t, 3_c_size_t]))
    call need(ok, koala_sums_size(opt_a, n_a))
    call need(ok, koala_sums_size(opt_b, n_b))
    call need(ok, koala_sums_size(opt_w, n_w))
    call check(ok .and. n_a == n_b .and. n_a == n_w .and. n_a > 0, &
               name // ': koala_create_sharded (tensor lists, global_tensor) and koala_sums_size')
    allocate(sums_a(n_a), sums_b(n_b))
    do k = 1, steps
       gw1 = [(0.1d0 * sin(0.9d0 * i + k), i = 1, 6)]
       gw2 = [(0.2d0 * cos(1.1d0 * i - k), i = 1, 4)]
       gw3 = [(0.05d0 * (i - 3) * k, i = 1, 5)]
       ga1 = gw1; ga2 = gw2(1:3); gb2 = gw2(4:4); gb3 = gw3
       loss = 1.0d0 / k; loss_var = 1.2d0 / k**2
       call need(ok, koala_predict(opt_w, pw))
       call need(ok, koala_predict(opt_a, pa))
       call need(ok, koala_predict(opt_b, pb))
       call need(ok, koala_update(opt_w, loss, loss_var, pw, gw))
       call need(ok, koala_update_begin(opt_a, pa, ga, sums_a))
       call need(ok, koala_update_begin(opt_b, pb, gb, sums_b))
       if (k == 1) then
          call need(ok, koala_get_info(opt_a, info_a))
          ok = ok .and. info_a%phase == 2
       end if
       sums_a = sums_a + sums_b          ! the all-reduce
       call need(ok, koala_update_end(opt_a, loss, loss_var, pa, ga, sums_a))
       call need(ok, koala_update_end(opt_b, loss, loss_var, pb, gb, sums_a))
    end do
    err = max(maxval(abs(a1 - w1)), maxval(abs(a2 - w2(1:3))), maxval(abs(b2 - w2(4:4))), &
              maxval(abs(b3 - w3))) / max(maxval(abs(w1)), maxval(abs(w2)), maxval(abs(w3)))
    call need(ok, koala_get_info(opt_w, info_w))
    call need(ok, koala_get_info(opt_a, info_a))
    call need(ok, koala_get_info(opt_b, info_b))
    call check(ok .and. err <= 1d-12 .and. info_a%steps == steps .and. &
               close_rel(info_a%r, info_w%r, 1d-14) .and. close_rel(info_b%p00, info_w%p00, 1d-12), &
               name // ': two shards, two-phase update: equal to the unsharded run (rel 1e-12)')
    call koala_destroy(opt_w)
    call koala_destroy(opt_a)
    call koala_destroy(opt_b)
  end subroutine sharded_case

  ! A sharded optimizer with the all-reduce callback, for a group of one
  ! process holding the whole model: koala_update calls the callback once
  ! per update with koala_sums_size doubles, and the run equals the
  ! unsharded one. A failing callback is KOALA_ERROR_COMMUNICATION and
  ! changes nothing.
  subroutine test_allreduce_callback()
    integer, parameter :: n1 = 7, n2 = 4, steps = 3
    real(c_float), target :: x1(n1), x2(n2), y1(n1), y2(n2), g1(n1 * steps), g2(n2 * steps)
    real(c_float) :: before1(n1)
    real(c_double) :: loss(steps), loss_var(steps)
    ! a local TARGET the callback changes through shard%user: the module's
    ! interfaces must make the compiler see that (see koala_create_sharded_raw)
    integer(c_size_t), target :: calls(2)
    type(koala_config) :: cfg
    type(koala_shard) :: shard
    type(koala_info) :: info
    type(koala_tensor_list) :: px, py, grads
    type(c_ptr) :: opt_x, opt_y
    integer(c_size_t) :: n_sums
    integer(c_int) :: st
    integer :: k
    logical :: ok
    procedure(koala_allreduce_fn), pointer :: check_interface

    check_interface => counting_allreduce     ! the callbacks match the abstract interface
    check_interface => failing_allreduce
    call make_inputs(steps, x1, x2, g1, g2, loss, loss_var)
    y1 = x1; y2 = x2
    call koala_config_init(cfg, KOALA_PLUSPLUS)
    call px%add(x1); call px%add(x2)
    call py%add(y1); call py%add(y2)
    calls = 0
    shard%n_global = 2
    shard%global_elements = n1 + n2
    shard%allreduce = c_funloc(counting_allreduce)
    shard%user = c_loc(calls)
    ok = .true.
    call need(ok, koala_create(cfg, px, KOALA_HOST, opt_x))
    call need(ok, koala_create_sharded(cfg, py, shard, KOALA_HOST, opt_y))
    call need(ok, koala_sums_size(opt_y, n_sums))
    do k = 1, steps
       call grads%clear()
       call grads%add(g1((k - 1) * n1 + 1:k * n1)); call grads%add(g2((k - 1) * n2 + 1:k * n2))
       call need(ok, koala_predict(opt_x, px))
       call need(ok, koala_predict(opt_y, py))
       call need(ok, koala_update(opt_x, loss(k), loss_var(k), px, grads))
       st = koala_update(opt_y, loss(k), loss_var(k), py, grads)
       ok = ok .and. st == KOALA_OK
    end do
    call check(ok .and. calls(1) == steps .and. calls(2) == n_sums, &
               'the Fortran all-reduce callback is called once per update with koala_sums_size doubles')
    call check(all(abs(y1 - x1) <= 1e-6 * maxval(abs(x1))) .and. &
               all(abs(y2 - x2) <= 1e-6 * maxval(abs(x2))), &
               'sharded over a group of one equals the unsharded run (float32 rounding)')
    call koala_destroy(opt_y)

    shard%allreduce = c_funloc(failing_allreduce)
    shard%user = c_null_ptr
    y1 = x1; y2 = x2
    ok = .true.
    call need(ok, koala_create_sharded(cfg, py, shard, KOALA_HOST, opt_y))
    call need(ok, koala_predict(opt_y, py))
    before1 = y1
    st = koala_update(opt_y, loss(1), loss_var(1), py, grads)
    call check(ok .and. st == KOALA_ERROR_COMMUNICATION .and. all(y1 == before1), &
               'a failing callback is KOALA_ERROR_COMMUNICATION and changes nothing: "' // &
               koala_last_error() // '"')
    st = koala_get_info(opt_y, info)
    call check(st == KOALA_OK .and. info%steps == 0 .and. info%phase == 1, &
               'after KOALA_ERROR_COMMUNICATION the optimizer is still predicted, no step counted')
    call koala_destroy(opt_y)
    call koala_destroy(opt_x)
  end subroutine test_allreduce_callback

end program test_koala

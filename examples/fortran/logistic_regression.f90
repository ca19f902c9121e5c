! logistic_regression.f90 - train a logistic-regression classifier with KOALA
! from Fortran: KOALA-V, KOALA-M and KOALA++ in turn, from the same start.
!
! The data are generated here: 512 points in 8 dimensions, labelled by a
! hidden linear rule (with 5% of the labels flipped). The model has two
! tensors, the weights w(8) and the bias b(1); the loss is the mean binary
! cross-entropy. Each iteration follows the KOALA calling contract:
!   koala_predict -> per-sample losses -> L = mean, M = mean of squares ->
!   gradient of L -> koala_update(L, M).
! The program prints the full-batch loss and accuracy as they improve and
! exits non-zero unless the loss fell with every method.
program logistic_regression
  use, intrinsic :: iso_c_binding
  use koala
  implicit none
  integer, parameter :: n_samples = 512, dim = 8, batch = 64, epochs = 15
  real(c_double), target :: w(dim), b(1), grad_w(dim), grad_b(1)
  real(c_double) :: x(dim, n_samples), y(n_samples), w_true(dim), u
  real(c_double) :: loss, loss_var, first_loss, z, p, l_j
  type(koala_config) :: cfg
  type(koala_tensor_list) :: params, grads
  type(c_ptr) :: opt
  integer :: i, j, epoch, start, m
  integer(c_int), parameter :: methods(3) = [KOALA_VANILLA, KOALA_MOMENTUM, KOALA_PLUSPLUS]
  character(len=*), parameter :: names(3) = ['KOALA-V ', 'KOALA-M ', 'KOALA++ ']
  logical :: all_fell

  call make_data()
  call params%add(w)
  call params%add(b)
  call grads%add(grad_w)
  call grads%add(grad_b)
  all_fell = .true.

  do m = 1, size(methods)
     w = 0
     b = 0
     call koala_config_init(cfg, methods(m))
     if (methods(m) == KOALA_VANILLA) cfg%sigma = 0.1d0   ! the reference train.py's value
     cfg%threads = 1         ! a tiny model: one CPU thread is plenty
     call require(koala_create(cfg, params, KOALA_HOST, opt), 'koala_create')

     first_loss = full_loss()
     write(*, '(a)') trim(names(m)) // ':'
     write(*, '(a, f8.5, a, f6.3)') 'epoch  0  loss ', first_loss, '  accuracy ', accuracy()
     do epoch = 1, epochs
        do start = 1, n_samples, batch
           call require(koala_predict(opt, params), 'koala_predict')
           ! forward + backward of the mean loss over the minibatch
           loss = 0; loss_var = 0; grad_w = 0; grad_b = 0
           do j = start, start + batch - 1
              z = dot_product(w, x(:, j)) + b(1)
              p = 1 / (1 + exp(-z))
              l_j = softplus(z) - y(j) * z       ! -log-likelihood, stable form
              loss = loss + l_j
              loss_var = loss_var + l_j * l_j
              grad_w = grad_w + (p - y(j)) * x(:, j)
              grad_b = grad_b + (p - y(j))
           end do
           loss = loss / batch
           loss_var = loss_var / batch
           grad_w = grad_w / batch
           grad_b = grad_b / batch
           call require(koala_update(opt, loss, loss_var, params, grads), 'koala_update')
        end do
        if (epoch <= 3 .or. mod(epoch, 3) == 0) &
           write(*, '(a, i2, a, f8.5, a, f6.3)') 'epoch ', epoch, '  loss ', full_loss(), &
                '  accuracy ', accuracy()
     end do
     call koala_destroy(opt)
     if (.not. full_loss() < 0.6d0 * first_loss) then
        write(*, '(a)') 'FAILED: the loss did not fall with ' // trim(names(m))
        all_fell = .false.
     end if
  end do
  if (.not. all_fell) stop 1

contains

  subroutine require(status, what)
    integer(c_int), intent(in) :: status
    character(len=*), intent(in) :: what
    if (status /= KOALA_OK) then
       write(*, '(a, a, a)') what, ' failed: ', koala_last_error()
       stop 2
    end if
  end subroutine require

  real(c_double) function softplus(z)
    real(c_double), intent(in) :: z
    softplus = max(z, 0d0) + log(1 + exp(-abs(z)))
  end function softplus

  subroutine make_data()
    integer :: seed_size
    integer, allocatable :: seed(:)
    call random_seed(size=seed_size)
    allocate(seed(seed_size))
    seed = 20220222
    call random_seed(put=seed)
    call random_number(w_true)
    w_true = 2 * w_true - 1
    call random_number(x)
    x = 4 * x - 2
    do i = 1, n_samples
       y(i) = merge(1d0, 0d0, dot_product(w_true, x(:, i)) + 0.3d0 > 0)
       call random_number(u)
       if (u < 0.05d0) y(i) = 1 - y(i)
    end do
  end subroutine make_data

  real(c_double) function full_loss()
    full_loss = 0
    do i = 1, n_samples
       z = dot_product(w, x(:, i)) + b(1)
       full_loss = full_loss + softplus(z) - y(i) * z
    end do
    full_loss = full_loss / n_samples
  end function full_loss

  real(c_double) function accuracy()
    accuracy = count((dot_product_all() > 0) .eqv. (y > 0.5d0)) / real(n_samples, c_double)
  end function accuracy

  function dot_product_all() result(z_all)
    real(c_double) :: z_all(n_samples)
    z_all = matmul(w, x) + b(1)
  end function dot_product_all
end program logistic_regression

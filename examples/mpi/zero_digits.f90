! zero_digits.f90 - ZeRO-style data-parallel training with KOALA over MPI,
! in Fortran 2008 with `use mpi_f08` and `use koala`.
!
!   mpirun -np P koala-mpi-digits-fortran [DATA_CSV [EPOCHS [METHOD [MIN_ACCURACY]]]]
!     METHOD: vanilla | momentum (default) | plusplus
!
! The same program as zero_digits.c, in float64: a 64-32-10 tanh MLP on the
! UCI digits (sample i is a test sample when mod(i, 5) == 4). Every rank
! holds the whole model for its forward/backward pass over 1/P of each
! global minibatch of 32 samples, and OWNS a slice of every tensor (elements
! n*r/P+1 .. n*(r+1)/P of a tensor of n elements): its KOALA optimizer
! (koala_create_sharded) covers only its slices. Per step:
!   koala_predict (slices)  -> [KOALA-M moved them: MPI_Allgatherv]
!   forward/backward over my samples (sums of per-sample gradients)
!   MPI_Reduce_scatter      -> the global-batch gradient of my slices
!   MPI_Allreduce           -> the global-batch mean loss and mean squared loss
!   koala_update (slices)   -> the library calls mpi_allreduce_sum once
!   MPI_Allgatherv          -> the whole updated model on every rank
! Rank 0 prints the mean training loss and test accuracy per epoch; with
! MIN_ACCURACY the exit status is 1 unless the final accuracy reaches it.
!
! cfg%threads = 1: one library thread per rank (ranks usually get a core
! each; raise it when a rank has several cores of its own).
module zero_support
  use, intrinsic :: iso_c_binding
  use mpi_f08
  implicit none
  private
  public :: mpi_allreduce_sum

contains

  !> koala_allreduce_fn over MPI: sums count doubles at buf, in place, over
  !> the communicator that `user` points to (shard%user = c_loc(comm)). A
  !> non-zero result makes koala_update return KOALA_ERROR_COMMUNICATION
  !> with nothing changed.
  integer(c_int) function mpi_allreduce_sum(buf, count, stream, user) bind(C)
    type(c_ptr), value :: buf, stream, user
    integer(c_size_t), value :: count
    real(c_double), pointer :: x(:)
    type(MPI_Comm), pointer :: comm
    integer :: ierror
    ! Host optimizers pass no stream; MPI counts are default integers.
    if (c_associated(stream) .or. count > int(huge(0), c_size_t)) then
       mpi_allreduce_sum = -1
       return
    end if
    call c_f_pointer(buf, x, [count])
    call c_f_pointer(user, comm)
    call MPI_Allreduce(MPI_IN_PLACE, x, int(count), MPI_DOUBLE_PRECISION, MPI_SUM, comm, ierror)
    mpi_allreduce_sum = int(ierror, c_int)
  end function mpi_allreduce_sum
end module zero_support

program zero_digits
  use, intrinsic :: iso_c_binding
  use mpi_f08
  use koala
  use zero_support
  implicit none

  integer, parameter :: n_in = 64, n_hidden = 32, n_out = 10, n_samples_max = 2000
  integer, parameter :: batch_size = 32, n_tensors = 4
  integer, parameter :: sizes(n_tensors) = [n_hidden * n_in, n_hidden, n_out * n_hidden, n_out]
  real(c_double), parameter :: weight_decay = 5d-4

  ! Data
  real(c_double) :: train_x(n_in, n_samples_max), test_x(n_in, n_samples_max)
  integer :: train_y(n_samples_max), test_y(n_samples_max), n_train, n_test
  ! The whole model (every rank) and the gradient sums of my samples
  real(c_double), target :: w1(n_hidden * n_in), b1(n_hidden), w2(n_out * n_hidden), b2(n_out)
  real(c_double) :: gw1(n_hidden * n_in), gb1(n_hidden), gw2(n_out * n_hidden), gb2(n_out)
  ! Packed buffers: rank 0's slices of the 4 tensors, then rank 1's, ...
  real(c_double), allocatable :: packed(:), grad_packed(:)
  real(c_double), allocatable, target :: my_grad(:)
  integer, allocatable :: counts(:), displs(:)

  integer :: rank, n_ranks, ierror, epochs, epoch, start, nb, first, last, i, j, t, at
  integer :: method, steps, order(n_samples_max), n_local, tmp
  integer(c_size_t), target :: global_tensor(n_tensors)
  integer(c_size_t) :: sums_count
  real(c_double) :: loss_sums(2), loss, loss_var, epoch_loss, accuracy, min_accuracy, u
  character(len=512) :: data_path, arg
  type(koala_config) :: cfg
  type(koala_shard), target :: shard
  type(koala_tensor_list) :: slices, grad_slices
  type(c_ptr) :: opt
  type(koala_info) :: info
  integer(c_int) :: status
  integer :: rng
  logical :: ok
  type(MPI_Comm), target :: koala_comm

  call MPI_Init()
  koala_comm = MPI_COMM_WORLD   ! the group KOALA's sums run over
  call MPI_Comm_rank(koala_comm, rank)
  call MPI_Comm_size(koala_comm, n_ranks)
  call MPI_Comm_set_errhandler(koala_comm, MPI_ERRORS_RETURN)

  data_path = 'examples/data/digits.csv'
  epochs = 10
  method = KOALA_MOMENTUM
  min_accuracy = -1
  if (command_argument_count() >= 1) call get_command_argument(1, data_path)
  if (command_argument_count() >= 2) then
     call get_command_argument(2, arg)
     read(arg, *) epochs
  end if
  if (command_argument_count() >= 3) then
     call get_command_argument(3, arg)
     select case (trim(arg))
     case ('vanilla');  method = KOALA_VANILLA
     case ('momentum'); method = KOALA_MOMENTUM
     case ('plusplus'); method = KOALA_PLUSPLUS
     case default;      call fail('METHOD must be vanilla, momentum or plusplus')
     end select
  end if
  if (command_argument_count() >= 4) then
     call get_command_argument(4, arg)
     read(arg, *) min_accuracy
  end if
  call load_digits(trim(data_path))

  ! The same initial model on every rank.
  rng = 12345
  call init_uniform(w1, 1 / sqrt(real(n_in, c_double)))
  call init_uniform(b1, 1 / sqrt(real(n_in, c_double)))
  call init_uniform(w2, 1 / sqrt(real(n_hidden, c_double)))
  call init_uniform(b2, 1 / sqrt(real(n_hidden, c_double)))

  ! The collectives' layout, and my slices as KOALA's local tensors.
  allocate(counts(0:n_ranks - 1), displs(0:n_ranks - 1))
  at = 0
  do i = 0, n_ranks - 1
     counts(i) = 0
     do t = 1, n_tensors
        counts(i) = counts(i) + slice_size(t, i)
     end do
     displs(i) = at
     at = at + counts(i)
  end do
  allocate(packed(at), grad_packed(at), my_grad(max(counts(rank), 1)))

  n_local = 0
  at = 0
  do t = 1, n_tensors
     if (slice_size(t, rank) == 0) cycle   ! no slice of this tensor here
     n_local = n_local + 1
     global_tensor(n_local) = int(t, c_size_t)   ! 1-based (the raw C field is 0-based)
     first = slice_first(t, rank)
     last = first + slice_size(t, rank) - 1
     select case (t)
     case (1); call slices%add(w1(first:last))
     case (2); call slices%add(b1(first:last))
     case (3); call slices%add(w2(first:last))
     case (4); call slices%add(b2(first:last))
     end select
     call grad_slices%add(my_grad(at + 1:at + slice_size(t, rank)))
     at = at + slice_size(t, rank)
  end do

  call koala_config_init(cfg, method)
  cfg%weight_decay = weight_decay
  if (method == KOALA_VANILLA) cfg%sigma = 0.1d0
  cfg%threads = 1
  shard%struct_size = c_sizeof(shard)
  shard%n_global = n_tensors
  shard%global_elements = sum(sizes)
  shard%allreduce = c_funloc(mpi_allreduce_sum)
  shard%user = c_loc(koala_comm)
  if (n_local == 0) then
     ! A rank holding nothing (more ranks than elements): the raw form, since
     ! an empty tensor list has no dtype yet.
     status = koala_create_sharded(cfg, 0_c_size_t, [0_c_size_t], shard, KOALA_FLOAT64, &
                                   KOALA_HOST, opt)
  else
     status = koala_create_sharded(cfg, slices, shard, KOALA_HOST, opt, &
                                   global_tensor=global_tensor(1:n_local))
  end if
  call check(status, 'koala_create_sharded')
  call check(koala_sums_size(opt, sums_count), 'koala_sums_size')
  if (rank == 0) then
     write(*, '(a, i0, a, i0, a)') 'koala-mpi-digits-fortran: method ', method, ' on ', &
          n_ranks, ' rank(s); 64-32-10 MLP in float64, global batch 32'
     write(*, '(a, i0, a, i0, a)') 'the library''s all-reduce: ', sums_count, ' doubles (', &
          sums_count * 8, ' bytes) per step'
  end if

  do i = 1, n_train
     order(i) = i
  end do
  rng = 777
  accuracy = 0
  do epoch = 1, epochs
     do i = n_train, 2, -1   ! the same shuffle on every rank
        call uniform(u)
        j = 1 + int(u * i)
        tmp = order(i); order(i) = order(j); order(j) = tmp
     end do
     epoch_loss = 0
     steps = 0
     do start = 1, n_train, batch_size
        nb = min(batch_size, n_train - start + 1)
        first = start + (nb * rank) / n_ranks          ! my share of the batch
        last = start + (nb * (rank + 1)) / n_ranks - 1

        call check(koala_predict(opt, slices), 'koala_predict')
        if (method == KOALA_MOMENTUM) call gather_model()

        call local_gradient(order(first:last), loss_sums)
        call pack_grad()
        call MPI_Reduce_scatter(grad_packed, my_grad, counts, MPI_DOUBLE_PRECISION, MPI_SUM, &
                                koala_comm, ierror)
        if (ierror /= MPI_SUCCESS) call fail('MPI_Reduce_scatter failed')
        my_grad = my_grad / nb
        call MPI_Allreduce(MPI_IN_PLACE, loss_sums, 2, MPI_DOUBLE_PRECISION, MPI_SUM, &
                           koala_comm, ierror)
        if (ierror /= MPI_SUCCESS) call fail('MPI_Allreduce failed')
        loss = loss_sums(1) / nb
        loss_var = loss_sums(2) / nb

        call check(koala_update(opt, loss, loss_var, slices, grad_slices), 'koala_update')
        call gather_model()
        epoch_loss = epoch_loss + loss
        steps = steps + 1
     end do
     if (rank == 0) then
        accuracy = test_accuracy()
        write(*, '(a, i3, a, f7.4, a, f6.1, a)') 'epoch ', epoch, '  train loss ', &
             epoch_loss / steps, '  test accuracy ', 100 * accuracy, '%'
        flush(6)
     end if
  end do

  call check(koala_get_info(opt, info), 'koala_get_info')
  ok = .true.
  if (rank == 0) then
     write(*, '(a, i0, a, es12.5)') 'filter after ', info%steps, ' steps: R ', info%r
     if (min_accuracy >= 0 .and. accuracy < min_accuracy) then
        write(*, '(a, f6.3, a, f6.3)') 'test accuracy ', accuracy, ' is below ', min_accuracy
        ok = .false.
     end if
  end if
  call MPI_Bcast(ok, 1, MPI_LOGICAL, 0, koala_comm)
  call koala_destroy(opt)
  call MPI_Finalize()
  if (.not. ok) error stop 1

contains

  subroutine fail(what)
    character(len=*), intent(in) :: what
    write(0, '(a, i0, a, a)') 'koala-mpi-digits-fortran (rank ', rank, '): ', what
    call MPI_Abort(MPI_COMM_WORLD, 1)   ! the other ranks would wait forever
  end subroutine fail

  subroutine check(s, what)
    integer(c_int), intent(in) :: s
    character(len=*), intent(in) :: what
    if (s /= KOALA_OK) call fail(what // ' failed: ' // koala_last_error())
  end subroutine check

  ! Park-Miller "minimal standard" generator: the same numbers everywhere.
  subroutine uniform(u)
    real(c_double), intent(out) :: u
    rng = int(mod(16807_c_int64_t * rng, 2147483647_c_int64_t))
    u = real(rng, c_double) / 2147483647d0
  end subroutine uniform

  subroutine init_uniform(x, scale)
    real(c_double), intent(out) :: x(:)
    real(c_double), intent(in) :: scale
    integer :: k
    do k = 1, size(x)
       call uniform(u)
       x(k) = scale * (2 * u - 1)
    end do
  end subroutine init_uniform

  ! Rank r owns elements slice_first .. slice_first + slice_size - 1 of tensor t.
  integer function slice_first(t, r)
    integer, intent(in) :: t, r
    slice_first = (sizes(t) * r) / n_ranks + 1
  end function slice_first

  integer function slice_size(t, r)
    integer, intent(in) :: t, r
    slice_size = (sizes(t) * (r + 1)) / n_ranks - (sizes(t) * r) / n_ranks
  end function slice_size

  subroutine load_digits(path)
    character(len=*), intent(in) :: path
    integer :: unit, line, values(n_in + 1), ios
    open(newunit=unit, file=path, status='old', action='read', iostat=ios)
    if (ios /= 0) call fail('cannot open ' // path)
    n_train = 0
    n_test = 0
    line = 0
    do
       read(unit, *, iostat=ios) values
       if (ios /= 0) exit
       if (mod(line, 5) == 4) then
          n_test = n_test + 1
          test_x(:, n_test) = values(1:n_in) / 16d0
          test_y(n_test) = values(n_in + 1)
       else
          n_train = n_train + 1
          train_x(:, n_train) = values(1:n_in) / 16d0
          train_y(n_train) = values(n_in + 1)
       end if
       line = line + 1
    end do
    close(unit)
    if (n_train == 0 .or. n_test == 0) call fail('no samples in ' // path)
  end subroutine load_digits

  ! Hidden activations, class probabilities and the loss of one sample.
  subroutine forward(x, label, hidden, prob, l)
    real(c_double), intent(in) :: x(n_in)
    integer, intent(in) :: label
    real(c_double), intent(out) :: hidden(n_hidden), prob(n_out), l
    real(c_double) :: logits(n_out)
    integer :: jj, c
    do jj = 1, n_hidden
       hidden(jj) = tanh(b1(jj) + dot_product(w1((jj - 1) * n_in + 1:jj * n_in), x))
    end do
    do c = 1, n_out
       logits(c) = b2(c) + dot_product(w2((c - 1) * n_hidden + 1:c * n_hidden), hidden)
    end do
    prob = exp(logits - maxval(logits))
    l = -(logits(label + 1) - maxval(logits) - log(sum(prob)))
    prob = prob / sum(prob)
  end subroutine forward

  ! Sums of the per-sample gradients, losses and squared losses of `samples`.
  subroutine local_gradient(samples, sums2)
    integer, intent(in) :: samples(:)
    real(c_double), intent(out) :: sums2(2)
    real(c_double) :: hidden(n_hidden), prob(n_out), dz2(n_out), dz1, l
    integer :: s, jj, c
    gw1 = 0; gb1 = 0; gw2 = 0; gb2 = 0
    sums2 = 0
    do s = 1, size(samples)
       call forward(train_x(:, samples(s)), train_y(samples(s)), hidden, prob, l)
       sums2 = sums2 + [l, l * l]
       dz2 = prob
       dz2(train_y(samples(s)) + 1) = dz2(train_y(samples(s)) + 1) - 1
       do jj = 1, n_hidden
          dz1 = dot_product(w2(jj:n_out * n_hidden:n_hidden), dz2) * (1 - hidden(jj)**2)
          gb1(jj) = gb1(jj) + dz1
          gw1((jj - 1) * n_in + 1:jj * n_in) = gw1((jj - 1) * n_in + 1:jj * n_in) + &
               dz1 * train_x(:, samples(s))
       end do
       do c = 1, n_out
          gb2(c) = gb2(c) + dz2(c)
          gw2((c - 1) * n_hidden + 1:c * n_hidden) = gw2((c - 1) * n_hidden + 1:c * n_hidden) &
               + dz2(c) * hidden
       end do
    end do
  end subroutine local_gradient

  real(c_double) function test_accuracy()
    real(c_double) :: hidden(n_hidden), prob(n_out), l
    integer :: s, correct
    correct = 0
    do s = 1, n_test
       call forward(test_x(:, s), test_y(s), hidden, prob, l)
       if (maxloc(prob, 1) == test_y(s) + 1) correct = correct + 1
    end do
    test_accuracy = real(correct, c_double) / n_test
  end function test_accuracy

  ! Packs one tensor's slices (rank-major order) into or out of `buf`.
  subroutine pack_tensor(tensor, t, buf, into_buf)
    real(c_double), intent(inout) :: tensor(:), buf(:)
    integer, intent(in) :: t
    logical, intent(in) :: into_buf
    integer :: r, off, k, n
    do r = 0, n_ranks - 1
       off = displs(r)
       do k = 1, t - 1
          off = off + slice_size(k, r)
       end do
       n = slice_size(t, r)
       if (into_buf) then
          buf(off + 1:off + n) = tensor(slice_first(t, r):slice_first(t, r) + n - 1)
       else
          tensor(slice_first(t, r):slice_first(t, r) + n - 1) = buf(off + 1:off + n)
       end if
    end do
  end subroutine pack_tensor

  subroutine pack_grad()
    call pack_tensor(gw1, 1, grad_packed, .true.)
    call pack_tensor(gb1, 2, grad_packed, .true.)
    call pack_tensor(gw2, 3, grad_packed, .true.)
    call pack_tensor(gb2, 4, grad_packed, .true.)
  end subroutine pack_grad

  ! Rebuilds the whole model on every rank from everyone's slices.
  subroutine gather_model()
    call pack_tensor(w1, 1, packed, .true.)
    call pack_tensor(b1, 2, packed, .true.)
    call pack_tensor(w2, 3, packed, .true.)
    call pack_tensor(b2, 4, packed, .true.)
    call MPI_Allgatherv(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, packed, counts, displs, &
                        MPI_DOUBLE_PRECISION, koala_comm, ierror)
    if (ierror /= MPI_SUCCESS) call fail('MPI_Allgatherv failed')
    call pack_tensor(w1, 1, packed, .false.)
    call pack_tensor(b1, 2, packed, .false.)
    call pack_tensor(w2, 3, packed, .false.)
    call pack_tensor(b2, 4, packed, .false.)
  end subroutine gather_model

end program zero_digits

! hello.f90 - the smallest Fortran consumer of an INSTALLED libkoala: built
! with `pkg-config --cflags --libs koala-fortran` only (koala.mod from the
! compiler-specific include directory), one KOALA++ step.
program hello
  use, intrinsic :: iso_c_binding
  use koala
  implicit none
  real(c_float), target :: w(4), g(4)
  type(koala_config) :: cfg
  type(koala_tensor_list) :: params, grads
  type(c_ptr) :: opt
  w = [1.0, -2.0, 0.5, 3.0]
  g = [0.5, -0.25, 0.125, 1.0]
  call koala_config_init(cfg, KOALA_PLUSPLUS)
  call params%add(w)
  call grads%add(g)
  if (koala_create(cfg, params, KOALA_HOST, opt) /= KOALA_OK) error stop 1
  if (koala_predict(opt, params) /= KOALA_OK) error stop 2
  if (koala_update(opt, 0.5d0, 0.25d0, params, grads) /= KOALA_OK) error stop 3
  call koala_destroy(opt)
  if (w(1) >= 1.0 .or. koala_version() /= KOALA_VERSION_NUMBER) error stop 4
  write(*, '(a, i0, a)') 'hello.f90: libkoala ', koala_version(), ', one KOALA++ step from Fortran'
end program hello

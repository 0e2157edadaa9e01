// Instantiation of the bindings for quad (IEEE binary128 through GCC __float128).
#include "register_impl.hpp"
#ifdef METASTEP_HAVE_FLOAT128
METASTEP_REGISTER(metastep::quad, quad)
#endif

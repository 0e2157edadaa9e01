// Instantiation of the bindings for longdouble.
#include "register_impl.hpp"
METASTEP_REGISTER(long double, longdouble)

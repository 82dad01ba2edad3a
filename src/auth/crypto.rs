//! A `jsonwebtoken` crypto provider backed by `ring`, the one crypto library
//! of the whole build.

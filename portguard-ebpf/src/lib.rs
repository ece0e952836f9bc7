// Empty on purpose: a library target lets `portguard` name this crate as a build-dependency, so
// cargo rebuilds the loader when the kernel program changes (see portguard/build.rs).
#![no_std]

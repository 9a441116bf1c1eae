// Package archtest guards tandem's architecture with tests: every package
// says what it is for and what it must never do, and the pure core (state
// machine, wire formats, replication, simulator) stays free of syscalls,
// sockets, goroutines and the wall clock.
//
// It has no code; it must never be imported.
package archtest

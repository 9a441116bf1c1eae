// Package e2e holds tandem's end-to-end tests: the real `tandem` binary,
// started as separate processes, talking over real sockets — on loopback for
// the HA pair itself, and in `tandem lab` network namespaces for the data
// plane. It has no code of its own beyond test helpers.
//
// Tests here must never end a process they did not start (they kill by the
// PID they started), and never leave a namespace behind, even when they fail.
package e2e

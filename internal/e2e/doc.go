// Package e2e holds tandem's end-to-end tests: the real `tandem` binary,
// started as separate processes, talking over real sockets — on loopback for
// the HA pair itself, and in `tandem lab` network namespaces for the data
// plane. It has no code of its own beyond test helpers.
//
// Tests here end only the processes they started, by PID, and remove every
// namespace they created, even when they fail.
package e2e

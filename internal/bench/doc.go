// Package bench measures tandem in its lab: the failover outage seen by a
// client probing a server through the virtual IPs (for every way of failing
// the ACTIVE unit), side by side with keepalived on the same lab in the same
// run; later, state-sync throughput and lag beside conntrackd.
//
// It reports numbers; it never asserts them (tests assert behaviour). It must
// never leave a lab, a namespace or a process of its own behind, and it ends
// only the processes it started.
package bench

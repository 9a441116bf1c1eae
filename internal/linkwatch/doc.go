// Package linkwatch reports link state changes of a namespace's interfaces
// as they happen, from netlink notifications, without polling.
//
// Watch first emits the current state of every watched link (a link that
// does not exist is reported down with reason "link missing"), then one
// event per change of state: repeated identical states are dropped, and so
// is the kernel's short-lived "admin up, carrier up, operational state not
// yet updated" step that precedes every link coming up. If the netlink
// socket fails (its buffer overflowed and events were lost, say) Watch
// subscribes again, re-reads every watched link and emits only what changed.
//
// A link is Up when it is administratively up and operationally up: its
// operational state is "up", or "unknown" (drivers that do not report one)
// with IFF_RUNNING. The Reason of a down link is "admin down", "carrier
// lost", "link removed" (deleted, moved to another namespace, or renamed
// away), "link missing" (not there at start) or "oper state <state>" for
// the rarer RFC 2863 states (dormant, testing, notpresent). Deleting a link
// that is up gives "admin down" then "link removed": the kernel closes it
// first and says so.
//
// Probe is a path monitor: an ICMP echo (raw socket, or an unprivileged
// ping socket without CAP_NET_RAW) or a TCP connect to a target every
// interval, reported with the same Event type under the name
// "probe:<target>": up after one success, down after a number of failures
// in a row.
//
// It must never change a link, never decide what a state change means for
// the cluster (the daemon does), and never poll.
package linkwatch

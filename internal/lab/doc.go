// Package lab builds a complete tandem HA firewall pair on one machine, in
// network namespaces, and runs the two daemons in it.
//
// A lab named N has five namespaces: N-client and N-server (the hosts on
// either side), N-fw-a and N-fw-b (the two firewall units, with a stateful
// nftables firewall that forwards and source-NATs from LAN to WAN), and N-sw
// (the switch, holding the LAN and WAN bridges). The units are also joined by
// a direct veth, the dedicated HA link. Every lab uses the same addresses
// (they live in separate namespaces), so several labs can run side by side.
// The virtual IPs are not configured by the lab: the daemons own them.
//
// Up builds the topology, writes each unit's config and the cluster key into
// the run directory (/run/tandem/lab/N), and starts the daemons; Down removes
// it all, even after a crash; Crash, Restore, KillDaemon, StartDaemon and
// SetLink inject the failures the HA daemon must survive.
//
// The lab must never create anything in the root network namespace, never
// touch a namespace whose name is not one of its own, never send traffic
// outside its namespaces, and never signal a process it cannot prove is its
// own daemon (a PID is checked against the recorded command line and start
// time, so a recycled PID is never killed). It is for tests, demos and
// development; it is no part of the daemon's code path.
package lab

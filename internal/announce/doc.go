// Package announce tells the segment who owns the VIPs now, and reports
// when someone else on the wire claims them.
//
// # Why
//
// When only the old ACTIVE's daemon dies, its VIPs stay in its kernel and
// that kernel keeps answering ARP and neighbour solicitations for them. The
// new ACTIVE must win at once and keep winning: it announces its VIPs
// (gratuitous ARP, unsolicited neighbour advertisements with the override
// flag) when it takes over, and re-announces within 50 ms whenever another
// unit is seen answering for them. This package provides the two halves:
// Announcer sends, WatchConflicts sees. It never decides: the daemon reads
// the conflicts and chooses to re-announce (or to step down).
//
// On a switched segment the old ACTIVE's answers to clients are unicast to
// the clients and never reach us, so merely listening rarely sees it.
// Announcer.Probe asks every holder of the VIPs to answer *us*: an ARP probe
// (RFC 5227, sender IP 0.0.0.0) draws a unicast ARP reply, and a neighbour
// solicitation from our EUI-64 link-local address with our MAC as source
// link-layer option draws a unicast solicited advertisement. Neither disturbs
// the clients' caches (a DAD-style solicitation from :: would: the holder
// defends with an override advertisement to all nodes).
//
// # Sending
//
// Frames are built here (with mdlayher/arp and mdlayher/ndp) and written to
// one AF_PACKET socket bound to the interface with protocol 0, so it
// receives nothing and can send anything. Unlike arp.Dial and ndp.Listen it
// does not need an IPv4 address or a non-tentative link-local address on
// the interface when it is opened (a virtual-MAC link has neither until the
// VIPs are added), and the source MAC and addresses are exactly ours. The
// socket is opened in NewAnnouncer, in the network namespace of the calling
// goroutine's thread, and stays bound to that namespace; opening it lazily
// at the first Announce would bind it to whatever namespace that later
// goroutine's thread happens to be in.
//
// For IPv4 each burst sends both forms of gratuitous ARP, broadcast: an ARP
// request (sender IP = target IP = VIP, target MAC zero, as the Linux kernel
// and RFC 5227's "ARP announcement" do, and arping -U) and an ARP reply
// (target MAC = ours, as arping -A). Implementations disagree on which one
// updates their cache (some ignore gratuitous requests, some replies); the
// cost of sending both is one more 42-byte frame. Linux updates an existing
// entry from either; it creates a new one only with arp_accept=1.
//
// For IPv6 each burst sends an unsolicited neighbour advertisement to
// ff02::1 with the override flag, the router flag (the units are routers;
// R=0 would make hosts drop us from their default router lists, RFC 4861
// §7.2.5) and the target link-layer address option, from the VIP itself (as
// the Linux kernel does), hop limit 255.
//
// # Watching
//
// WatchConflicts reads two AF_PACKET datagram sockets bound to the
// interface: one for ETH_P_ARP and one for ETH_P_IPV6 with a BPF filter that
// passes only ICMPv6 neighbour advertisements. Protocol-bound sockets see
// every received frame of their protocol, also frames not addressed to us
// that the NIC delivers (broadcasts, the segment's flooded unicast), and
// never our own transmissions. ETH_P_ALL would also see what we send and
// would make the kernel clone every transmitted packet of a busy firewall
// for the tap. Promiscuous mode is not set: on a switched segment it adds
// load without adding the answers that matter, which Probe brings to us.
//
// A conflict is any received ARP packet (request or reply, gratuitous or
// not: RFC 5227 §2.4) whose sender IP is one of ours with a sender MAC that
// is not ours, or a neighbour advertisement whose target is one of ours with
// a target link-layer address (or, without that option, a source MAC) that
// is not ours. With a virtual MAC both units use the same MAC, so a stale
// holder cannot be told apart on the wire; it is the switch's forwarding
// table that our announcements win back.
//
// # What it must never do
//
// It never decides who is ACTIVE, never adds or removes addresses, never
// sends anything but what it is asked to (no periodic traffic of its own),
// and never sends or listens outside the interface it was given.
package announce

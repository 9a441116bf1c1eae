// Package vip owns the cluster's virtual IP addresses (VIPs) in the kernel
// through netlink.
//
// A Manager is built once at start for a fixed set of interfaces. Acquire
// puts every configured VIP on its link (the ACTIVE unit calls it), Release
// takes them all off (the STANDBY unit calls it), and Held tells which of
// them the kernel has right now, so that a VIP left behind by a crashed
// daemon can be removed at start on a unit that is not ACTIVE. Acquire and
// Release are idempotent and are on the failover path: links are resolved and
// the netlink requests prepared once, in New, so that Acquire costs one
// netlink round trip per address (plus one per virtual-MAC link).
//
// IPv6 VIPs are added with IFA_F_NODAD: the address is usable at once and
// never sits tentative for a second while the peer's entry ages out.
//
// # Virtual MAC
//
// With Interface.VirtualMAC the VIPs of that interface live on a macvlan
// named "<parent>.vip" (the parent name is cut to 11 bytes so the whole name
// fits Linux's 15) whose MAC is VRRP's 00:00:5e:00:01:<cluster id>, or
// 00:00:5e:00:02:<cluster id> when the interface has only IPv6 VIPs. Clients
// then never need their neighbour entry changed on failover: the switch
// learns the MAC on the new port from the first announcement.
//
// The macvlan is in private mode. Any mode but passthru leaves the parent
// usable with its own address (passthru hands the whole port to the one
// macvlan); bridge and vepa only differ from private in how macvlans on the
// same parent talk to each other, and nothing here should, so private is
// the least surprising.
//
// The macvlan is created (down) by New and kept: Release removes the VIPs
// and sets it down, Acquire sets it up and adds them. Deleting it on Release
// would make every failover create a link, set its sysctls and wait for the
// kernel to register it, which is slower and can fail in more ways; a down
// macvlan receives nothing and answers nothing, so keeping it costs nothing.
// It must be down, not merely empty, on the STANDBY: an up macvlan still
// sends (MLD reports, for one) from the shared MAC, and every such frame
// moves the switch's forwarding entry for that MAC to the STANDBY's port.
// Setting a link down waits for an RCU grace period (~50 ms here), so
// Release is slower with VirtualMAC; the VIPs are removed before that wait.
//
// The macvlan has IPv6 address generation off (addrgenmode none): the two
// units would otherwise make the same link-local address from the shared
// MAC, and bringing the link up costs ~4 ms with it against ~0.3 ms without.
// The kernel sends neighbour advertisements for a VIP from the VIP itself,
// so the VIPs need no link-local address.
//
// Linux answers ARP for any local address on any interface by default, so
// without help the parent would answer for the VIP with its own MAC (and the
// macvlan for the unit's own address with the virtual MAC). New therefore
// raises net.ipv4.conf.<link>.arp_ignore to 1 (answer only for addresses of
// the receiving link) and arp_announce to 2 (use the outgoing link's own
// address as ARP sender) on both the parent and the macvlan, as keepalived
// does for its VMAC interfaces. These are written in Options.NetNS when the
// handle was opened in another namespace. Reverse-path filtering is left as
// the operator set it: with strict rp_filter on the macvlan, replies routed
// out of the parent can be dropped; use loose mode (2) there.
//
// # What it must never do
//
// It never decides who is ACTIVE: it does what it is told. It never removes
// or changes an address it is not configured with (the unit's own addresses
// stay), never touches a link it was not told about except the "<parent>.vip"
// macvlan it owns, and never announces anything on the wire (package
// announce does).
package vip

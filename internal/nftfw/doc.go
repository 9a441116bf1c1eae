// Package nftfw installs the small stateful firewall that the tandem lab
// runs on each firewall unit: one nftables table, inet "tandem_fw", with a
// forward chain (policy drop) that drops everything from the addresses in
// the dynamic set "blocklist" (type ipv4_addr, flags timeout: filled at run
// time, and synchronized to the standby with sync.nft_sets), lets new
// connections out from LAN to WAN, lets established and related traffic
// through, and drops TCP packets that open no connection (not a SYN) but are
// not known to conntrack; a prerouting chain that assigns the FTP conntrack
// helper (ct helper "ftp-standard") to FTP control connections from the LAN,
// so that active-mode data connections are RELATED through an expectation;
// and a postrouting chain that source-NATs everything leaving WAN to the WAN
// virtual IP (the kernel's FTP NAT helper rewrites PORT commands to match).
//
// The explicit SNAT target (rather than masquerade) matters: both units must
// produce the same NAT mapping so that a connection can survive a failover
// once conntrack state is synchronised. The non-SYN drop matters too: without
// state sync, mid-stream packets reaching the new ACTIVE unit must be
// dropped, which is what the lab's negative control relies on.
//
// The ruleset is programmed through netlink (google/nftables), never by
// running the nft binary, and each change is one atomic transaction.
//
// nftfw must never touch any table other than inet tandem_fw, never flush
// the whole ruleset, and never act on a namespace other than the one it is
// handed.
package nftfw

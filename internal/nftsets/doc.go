// Package nftsets synchronizes the elements of nftables named sets whose
// content changes at run time (blocklists filled by an IPS, meters,
// rate-limit sets, sets filled by rules such as
// "add @blocklist { ip saddr timeout 1h }") from the ACTIVE unit to the
// STANDBY, with the remaining timeout of each element, so that an address
// blocked on the ACTIVE is still blocked after a failover.
//
// It is the kernel adapter only, in two halves:
//
//   - [Source] reads the configured sets of the ACTIVE's namespace and turns
//     them into [Change]s: a full listing, then every element added, changed
//     (refreshed timeout, new comment) or removed, including elements that
//     expire. Change detection is a poll of the sets every
//     [Source.PollInterval] (200 ms by default) diffed against the previous
//     listing, woken early by nftables monitor events: see [Source.Run].
//   - [Sink] writes [Change]s into the same sets of the STANDBY's namespace.
//     Its Put, Delete and Reset are exactly internal/repl's Store interface.
//
// Between them the elements travel as opaque key/value bytes ([EncodeKey],
// [EncodeValue], [DecodeElement]) through replication tables named
// "nftset:<family>:<table>:<set>" ([SetRef.ReplTable]).
//
// The package talks to the kernel over netlink (NETLINK_NETFILTER) in the
// namespace it is handed. It never runs the nft binary.
//
// Carried: keys of any type (addresses, concatenations such as
// "ipv4_addr . inet_service", interval sets as their start and end
// elements, the catch-all element), map data (e.g. "ipv4_addr : mark"),
// element timeouts and remaining times, comments. Not carried: verdict maps
// and object maps (refused when opened), and the state of per-element
// stateful expressions (the counter, limit or quota of a meter's element):
// the standby's kernel gives an element it adds the set's expressions
// afresh.
//
// What it must never do:
//
//   - replicate: ordering, acknowledgement, resynchronisation, rate limits
//     and transport belong to internal/repl; this package only produces and
//     applies changes;
//   - touch a set it was not configured with: no other set, table or chain
//     is created, changed, flushed or deleted, and a change for an unknown
//     replication table is dropped;
//   - create or change a set's definition (type, flags, timeout): both units
//     load the same ruleset; a set that is missing is an error;
//   - decide HA state: which unit runs a Source and which a Sink is the
//     daemon's decision.
package nftsets

// Package ctsync is tandem's kernel conntrack adapter. On the ACTIVE unit
// a Source reports every change of the kernel's connection-tracking and
// expectation tables; on the STANDBY a Sink writes the replicated entries
// into its own kernel, so that established connections (with their NAT
// mappings) survive a failover. It is the part of conntrackd's job that
// touches the kernel.
//
// It must never hold replication logic: sequencing, batching for the wire,
// acknowledgements, digests and resynchronisation between the units belong
// to internal/repl, which carries this package's entries as opaque
// key/value bytes in the tables "conntrack" and "expect". It must never
// decide HA state (the daemon says when to promote), and never touch a
// namespace it was not handed: every socket is opened inside the namespace
// handle given to OpenSource or OpenSink, and it changes no sysctl, no
// ruleset and nothing but the conntrack and expectation tables of that
// namespace.
//
// # Entries
//
// Key(f) is a connection's original tuple and zone (14 bytes for TCP/UDP
// over IPv4); EncodeFlow/DecodeFlow carry everything the other unit needs:
// both tuples (so SNAT and DNAT come back identical), status masked with
// StatusSyncMask, timeout, mark, zone and tuple zones, TCP state, window
// scales and flag bytes (SCTP and DCCP state too), helper name and data,
// labels, master tuple, sequence adjustments (NAT helpers' offsets) and
// SYN proxy data. The reply tuple is stored as a difference from the
// inverse of the original, so a TCP/IPv4 entry with SNAT takes about 30
// bytes. ExpectKey/EncodeExpect/DecodeExpect do the same for expectations
// (master, expected and mask tuples, timeout, zone, helper, function,
// flags, class, NAT direction and tuple). Decoding never panics (fuzzed).
//
// # Source
//
// Run subscribes to the new, update and destroy events of both tables on
// a socket with a 64 MiB buffer (SO_RCVBUFFORCE), then dumps both tables
// (a newly ACTIVE unit publishes everything; with
// SourceOptions.DumpOnRequest only when RequestDump says a standby wants a
// copy — then by looking up SourceOptions.KnownKeys, the connections the
// unit mirrored as a standby, when they are few, the full dump following
// RequestFullDump — SourceOptions.Ready saying when the table is
// published), then reports changes in batches. When Run has returned, Published hands its record of the
// connections it reported (key, value hash, NAT fingerprint) to the Sink
// that follows it on the same unit, which reconciles the next full copy
// with it instead of dumping the kernel's table (adopt.go). A reader goroutine moves events from the kernel into a bounded
// queue as fast as they come. An overrun (ENOBUFS from the kernel, or the
// queue full because out is slow) loses nothing: Run subscribes again on a
// fresh socket (what is still queued on the old one is older than the loss
// and would undo the repair), dumps both tables, emits a Put for every
// entry and a Delete for every reported key that is gone (it keeps a
// compact set of reported keys: about 40 bytes per connection), and counts
// the overrun. Loopback connections and whatever SourceOptions ignores
// (prefixes, ports, a filter function) are not reported.
//
// # Sink
//
// Put, Delete and Reset match internal/repl's Store interface; they copy
// what they keep and only queue. One writer goroutine owns the kernel side
// and sends requests in batches of 256 per system call (an ack asked only
// for the last; the kernel answers every failed one anyway) over two
// sockets. Each write is a small state machine: create; on EEXIST update;
// when the kernel refuses the update (a new connection on the same tuple:
// status bits that can only be set, another NAT mapping) delete and
// create; a related connection whose master is not there is created
// unrelated; a helper or labels this kernel lacks are left out;
// expectations are written after the connections they hang on and retried
// when more connections arrive.
//
// Inject mode writes every change at once, with a timeout of at least
// StandbyTimeout (the ACTIVE reports a connection only when its state
// changes, while its own copy is refreshed by every packet: the standby
// must not expire it alone; destroys are replicated). Promote then retries
// what failed, deletes entries left over from before a Reset and gives the
// injected entries their replicated timeouts. Hold mode keeps the entries
// in memory and writes them all at promotion.
//
// A full copy (Reset, then every entry again: a standby's daemon started
// while its kernel kept the table, a gap in the stream) is reconciled with
// the kernel in Inject mode (adopt.go): one dump, then only the entries
// whose value differs are written. What the dump found is never deleted
// for being absent from the copy (adopt.go says why), and entries with
// one of the unit's own addresses are not even recorded.
//
// Checkpoint saves the Sink's record of what it wrote (keys, value
// hashes, replicated timeouts) with the caller's replication position,
// once everything queued before is in the kernel; LoadCheckpoint gives a
// restarted daemon's Sink that record back after checking it against the
// kernel (same boot and namespace, no fewer connections, a sample looked
// up), so that the stream resumes after the position with neither a full
// copy nor a dump (checkpoint.go).
//
// # What the kernel does (Linux 6.18), and the choices made here
//
// NAT: ctnetlink does not derive NAT from a reply tuple handed to it: the
// entry would match the replies but never translate them. It needs
// CTA_NAT_SRC/CTA_NAT_DST, which ti-mo/conntrack cannot marshal, so this
// package builds its own requests (and its own decoder, below): the original
// tuple, the un-NATed reply tuple and NAT ranges pinned to the replicated
// address and port. The kernel then computes exactly the replicated reply
// tuple and sets the NAT and NAT-done status bits itself. ti-mo's Conn is
// not used either for events (its listeners stop at the first ENOBUFS) or
// dumps (they gather the whole table in memory).
//
// Status: user space can only set SEEN_REPLY, ASSURED and FIXED_TIMEOUT
// (and CONFIRMED, always sent); EXPECTED, SEQ_ADJUST, HELPER and the NAT
// bits follow from the master, sequence adjustment, helper and NAT
// attributes. Confirmed, NAT-done, dying, template, untracked and offload
// bits are never replicated.
//
// Events: with net.netfilter.nf_conntrack_events=2 (the default) a
// connection gets the event extension only if a listener exists when it is
// created; connections from before the daemon listened never report an
// update or their end. Set it to 1 on the units (OpenSource warns
// otherwise); SourceOptions.ResyncInterval (10 minutes) dumps again and
// reports what changed unseen. Update events carry protocol info, labels,
// master and sequence adjustment only when they change, so the Source
// reads the entry when an update lacks them. A NAT helper rewriting a
// command (FTP PORT) changes the sequence adjustment without any event:
// the Source reads the master again 50 ms after an expectation appears.
//
// TCP window tracking: ctnetlink sets an injected entry's state, window
// scales and flags (this package sends the flag masks the kernel's reports
// leave at zero, and drops MAXACK_SET, whose td_maxack cannot be sent),
// but not the sequence bounds (td_end, td_maxend, td_maxwin). The kernel
// then initialises each direction from the first packet it sees, as for a
// connection picked up mid-stream, and bounds the rest of the first burst
// by guesses: a reply acknowledging data the new unit never saw is out of
// window. Such a packet gets no conntrack entry, so it is not de-NATed; the
// shared address is local on the firewall, whose own stack answers with a
// RST and kills the connection. TestTakeoverWindowTracking shows it
// (uploading client, tiny receive window: the connection was reset in one
// run out of three). The kernel marks its own mid-stream pickups
// IP_CT_TCP_FLAG_BE_LIBERAL for this reason, and conntrackd does the same
// to recovered connections by default (TCPWindowTracking off). So does the
// Sink: injected TCP entries are liberal in both directions, those
// connections only. The global nf_conntrack_tcp_be_liberal is left alone:
// it would weaken every connection of the unit, and new connections after
// the takeover are still fully tracked. SinkOptions.TCPWindowTracking
// keeps the checks.
//
// Not replicated: counters, timestamps, IDs, the security context, TCP
// sequence bounds, helpers' private data (the FTP helper parses the next
// command line again), expectation timeouts (the kernel applies the
// helper's policy to expectations created through ctnetlink).
//
// # Decoding
//
// Messages are decoded by hand (fastdecode.go) into ti-mo/conntrack's Flow
// and Expect types, which the rest of the package keeps. ti-mo's
// Event.Unmarshal goes through mdlayher/netlink's AttributeDecoder: a heap
// decoder, a closure and a copy of the payload for every attribute, 38
// allocations and about 5.5 us for a typical TCP event here; with it,
// decoding was half of the Source's CPU (and most of its garbage) and the
// Source fell behind the kernel at a million new connections. No Go library decodes
// ctnetlink without that kind of cost: vishvananda/netlink reads every
// field through binary.Read and has no events or expectations,
// florianl/go-conntrack uses the same AttributeDecoder and puts every
// field behind its own pointer. The decoder here walks the message in
// place: one allocation and about 1 us. It reproduces ti-mo exactly,
// malformed input included (it accepts and refuses the same messages,
// with the same result); the tests check it against ti-mo
// (decodeEventTiMo) on sample, corrupted and kernel-captured messages, and
// FuzzDecodeEvent on arbitrary bytes.
//
// # Measurements
//
// Kernel 6.18, 2 vCPU (Xeon 2.5 GHz), 24 GiB; one-shot benchmarks as root
// inside fresh namespaces, nf_conntrack_max and the hash size raised for
// the run and restored:
//
//	go test ./internal/ctsync/ -run '^$' -bench . -benchtime=1x -args -ctsync.n=100000
//	go test ./internal/ctsync/ -run '^$' -bench . -benchtime=1x -args -ctsync.n=1000000
//
// TCP/IPv4 connections, a third of them SNATed (one run each; repeated
// runs on this VM vary by up to about 30%):
//
//	                                      N = 100,000         N = 1,000,000
//	BenchmarkSourceEvents
//	  created (2 writers, batches of 256) 1.16 s (86k/s)      13.6 s (74k/s)
//	  every connection reported after     2.0 s (50k/s)       33.9 s (30k/s)
//	  lost / overruns / dumps             0 / 0 / 1           0 / 1 / 2
//	BenchmarkSinkInject
//	  Puts (caller side)                  292k/s              250k/s
//	  every entry in the kernel after     0.67 s (150k/s)     9.8 s (102k/s)
//	  Promote (all timeouts refreshed)    0.19 s              3.0 s
//	  standby heap                        35 B/entry          56 B/entry
//	BenchmarkSinkHoldPromote
//	  Puts (caller side)                  687k/s              567k/s
//	  Promote (write everything)          0.50 s (201k/s)     7.3 s (137k/s)
//	  standby heap                        79 B/entry          110 B/entry
//
// At a million connections the Source reported 30k changes/s while the
// kernel made 74k/s: the queue filled, and the overrun was repaired by a
// dump with nothing lost. Promote in Inject mode refreshed every timeout
// in this table (every benchmark entry has one below StandbyTimeout):
// since then Promote returns once stale entries are gone and failed
// writes retried, and the timeouts are set afterwards, a chunk at a time
// behind live changes (injectPromoteOps).
//
// Kernel-side creation dominates and is serialised (ctnetlink's new and
// delete requests run under the subsystem mutex): a second socket gains
// about 15%, four barely more. Decoding with ti-mo was half of the
// Source's own CPU (profile at N = 1,000,000). With the hand-written
// decoder (see Decoding), in alternating runs at N = 1,000,000 (the
// machine busier than for the table), every connection was reported after
// 13.3 to 21.3 s (5 runs; 2 without an overrun, keeping pace with the
// kernel) against 24.6 to 33.7 s with ti-mo (4 runs, all with an
// overrun); decoding is now a sixth of the Source's CPU, reading the
// sockets half.
//
// # Recommendation: Inject
//
// Continuous injection costs the standby kernel work all along (one
// request per replicated change, far below what it can take: the ACTIVE's
// event rate is lower) and kernel memory for the entries, but at
// promotion every connection is already in the table: traffic flows from
// the first packet, and the timeout refresh after Promote runs on entries
// that already work (it only concerns entries whose replicated timeout is
// below StandbyTimeout: established TCP connections need none). Commit on
// promotion keeps the standby idle and uses less memory than the kernel
// would, but at a million entries the last one reaches the table seconds
// after the takeover, and every connection still missing drops its packets
// until then. Use Hold only where the standby must not carry the table.
package ctsync

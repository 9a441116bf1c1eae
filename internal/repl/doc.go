// Package repl is tandem's replication engine: the pure core that copies
// replicated state (kernel conntrack entries, nftables dynamic-set
// elements, later config revisions) from the ACTIVE unit to the STANDBY, so
// that the standby can take over without dropping connections.
//
// One engine serves every kind of state. State is a set of named tables
// ("conntrack", "expect", "nftset:blocklist") of entries key -> value; keys
// and values are opaque bytes. The ACTIVE's [Source] is told every change
// (Put, Delete) and keeps the tables; the STANDBY's [Sink] applies the
// stream to a [Store] (an adapter, or the compact in-memory [MapStore]).
// The two talk in frames, each one []byte that the channel carries with its
// own length prefix, in order and without loss within one connection.
//
// # Protocol
//
//   - Every change that enters the stream gets the next sequence number of
//     the source's run (a run is named by SourceConfig.SourceID). Changes to
//     one key that wait to be sent (rate limit, full window, link down) are
//     merged: only the key's latest state is sent, so a hot key never grows
//     the queue, and the queue never holds more than one item per key.
//   - On every connection the sink says Hello: its id, and either "I hold
//     source S's state at seq N" or "send everything" (Full). The source
//     resumes from N+1 when S is its own id and its retransmit window still
//     holds every change after N; otherwise it sends a full copy:
//     SnapshotBegin (the sink resets every table), Entries chunks, then
//     SnapshotEnd with the digests. Changes keep flowing during a copy, in
//     the same stream: a change to a key the copy has not reached yet makes
//     the change carry the key and the copy skip it, so each key reaches
//     the sink once, in order, and the copy ends with exactly the stream's
//     state whatever changed meanwhile.
//   - A sink whose store outlives it (a standby's kernel table outlives a
//     restart of its daemon) saves its [Position] (source id, seq, digests)
//     with a record of the store; a new sink [Sink.Resume]s from it, and
//     its Hello asks to resume after that seq like a reconnecting sink.
//     The source's digest, sent at once, confirms the state.
//   - Each Put carries the EntryHash of the value it replaces, and each
//     Delete the one of the value it removes (0: none), as the sink holds
//     them. So the sink keeps a per-table digest (XOR of EntryHash over its
//     entries, and a count) without storing a hash per key. The source sends
//     its digests at the same seq every SourceConfig.DigestEvery and at the
//     end of a copy. A sink whose store is a [Ranger] also recomputes them
//     from the store every SinkConfig.AuditEvery, which catches a store
//     changed behind its back.
//   - A Changes frame that skips sequence numbers (a gap), a digest that
//     differs, or a malformed frame makes the sink send Resync and ignore
//     the stream until the SnapshotBegin of a new copy. The sink acknowledges
//     what it applied (Ack, at least every SinkConfig.AckEvery) and reports
//     its status (Status); the source keeps at most SourceConfig.Window
//     unacknowledged bytes in flight and at most the configured rates per
//     second (token buckets driven by the times passed in).
//   - Sync status (the sink's, and the source's copy of it): UNKNOWN until
//     the first connection; IN_SYNC once a copy or the stream after it
//     matched the source's digest; OUT_OF_SYNC while a copy is awaited or
//     received, after a gap or mismatch, and once the link has been down for
//     SinkConfig.OutOfSyncAfter.
//
// # Frame layout (version 1)
//
// Every frame starts with the magic "TR", the version (1) and the type.
// u64 is 8 bytes big-endian; uv is an unsigned LEB128 varint in its
// shortest form; name is a length byte (1..255) and that many bytes; bytes
// is a uv length and that many bytes.
//
//	type  frame          direction      body
//	 1    Hello          sink → source  sink_id u64 | flags u8 (bit 0 Full) | source_id u64 | seq uv
//	 2    SnapshotBegin  source → sink  source_id u64 | seq uv | n uv | n × name
//	 3    Entries        source → sink  n uv | n × name | m uv | m × (table uv | key bytes | value bytes)
//	 4    SnapshotEnd    source → sink  source_id u64 | flags u8 (0) | sent uv | seq uv | n uv | n × (name | entries uv | sum u64)
//	 5    Changes        source → sink  source_id u64 | first_seq uv | n uv | n × name | m uv | m × op
//	 6    Ack            sink → source  seq uv | received uv (frame bytes received on this connection)
//	 7    Digest         source → sink  source_id u64 | flags u8 (bit 0 copying) | sent uv | seq uv | n uv | n × (name | entries uv | sum u64)
//	 8    Resync         sink → source  reason u8 (1 gap, 2 mismatch, 3 malformed, 4 audit, 5 retry)
//	 9    Status         sink → source  status u8 | source_id u64 | seq uv | entries uv
//
//	op:   kind u8 (1 put, 2 delete) | table uv | key bytes | value bytes (put only) | old_hash u64
//
// The names of Entries and Changes are the tables their ops refer to, by
// index, so each frame stands alone. "sent" is the frame bytes the source
// sent on this connection before the frame: the sink re-bases its count of
// received bytes on it, so that frames lost below the engine (which the
// channel must not do, but an adapter bug might) cannot hold the window
// shut. A Digest flagged copying is sent during a copy: it has no tables,
// only seq and sent. Op i of a Changes frame has sequence
// number first_seq+i. Limits: keys up to 64 KiB, values up to 1 MiB, and
// every op fits in SourceConfig.MaxFrame (64 KiB by default).
//
// # Using it
//
// One event loop owns a Source (or a Sink): it calls Put and Delete as the
// adapter reports changes, Connected and Disconnected as the channel comes
// and goes, Handle for every frame received, then Poll, and sends what
// Poll returns. It also calls Poll at NextDeadline (digests, acks, rate
// limit, timeouts). Frames returned by Poll point into the engine's
// buffers: they are valid until the next Poll, so the channel must write
// (or copy) them before. Nothing blocks: a frame that cannot go yet (rate
// limit, window) waits in the engine, and changes to the same key merge
// meanwhile.
//
// # Memory
//
// Tables (the source's, and MapStore's) are arenas of records with an
// open-addressing index of 8 bytes per slot, no Go pointer per entry: at a
// million entries of 24-byte keys and 80-byte values both cost about 125
// bytes per entry of live heap (BenchmarkSourceMemory,
// BenchmarkMapStoreMemory). The source also keeps up to
// SourceConfig.RetransmitBytes of sent frames and at most one queue item
// per changed key (about 45 bytes). A table whose size is known
// (SourceConfig.SizeHints, MapStore.Reserve) never pauses to double its
// index.
//
// # What it must never do
//
// No I/O, no sockets, no goroutines, no wall clock: time is an argument of
// every input, so tests (sim_test.go) run this very code under a fake
// clock, and the daemon owns the event loop and the channel. It never
// knows what a conntrack entry is: keys and values are opaque bytes, and
// the adapters convert. It allocates nothing per change once its buffers
// have grown: tables live in arenas, frames are encoded into reused
// buffers, and a parsed frame's keys and values point into the frame.
package repl

// Package snapshot replicates the whole management database — the config
// store with its history and audit log — from the ACTIVE to one or more
// STANDBY units, Check Point style: a full copy, verified end to end.
//
// Take (ACTIVE) copies the bbolt file inside one read transaction, which
// sees a consistent state while publishes go on: writers are not blocked
// for the copy's duration. The copy is cut into chunks, each compressed
// with zstd and checked by a crc32c of the compressed bytes and a 128-bit
// tag (AES-GMAC under a per-snapshot key) of the raw bytes, and streamed
// as it is read, nothing spooled: header (magic, version, snapshot id,
// size), chunks, trailer (the digest: sha256 of the tags, a hash tree
// over the whole file).
//
// Compression and decompression never keep more than all cores but one
// (at least one) busy, Takes and Receives together: the last core is the
// event loop's and the writers'.
//
// Receive (STANDBY) writes the chunks into a temp file in the database's
// directory, checking each chunk, the trailer and the whole-file digest, and
// that the result opens as a bbolt database; it fsyncs the file and the
// directory, then closes the live store, renames the file over it
// atomically, fsyncs the directory and reopens the store (Swap callbacks).
// Stage and Staged.Install split the two halves for a caller that installs
// from its event loop; Staged.Patch lets it carry what is its own (the
// receiver's conflicts, internal/configstore.CarryOver) into the verified
// file before the install. NewResult is the restore notification sent back to
// the ACTIVE; PeerSync and DecideStatus give the dashboard each peer's
// status.
//
// A Worker runs the bulk half of both — reading, compressing and tagging;
// checking, decompressing, writing and fsyncing — in a child process
// (`tandem snapshot-worker`) at normal priority, below the realtime daemon
// and outside its Go heap, which it shared before (BENCHMARKS.md, findings
// 16, 18, 22 and 26). The daemon keeps what must stay with it: the read
// transaction that pins the copied pages (the worker reads them from the
// file, after the meta pages the daemon hands it), and the temp file's
// lock. InProcess runs the same code in the caller (tests, tools).
//
// What it must never do: swap in an unverified file. A corrupted,
// truncated or mismatching stream is rejected before the live database is
// touched, and the previous database stays byte for byte as it was. Nor
// may it leave snapshot files behind: temp files are removed on
// every path, and the only leftover of a crash — a temp file no process
// holds locked — is removed by the next Receive or configstore.Open
// (CleanTemp).
package snapshot

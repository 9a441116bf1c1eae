package repl

import "sort"

// Store is where a [Sink] applies the stream: implemented by the adapters
// (conntrack injector, nftables set writer) or by [MapStore]. Its methods
// are called from the sink's caller's goroutine only, during [Sink.Handle].
type Store interface {
	// Put sets key to value in table. It must copy what it keeps: key and
	// value point into the received frame.
	Put(table string, key, value []byte)
	// Delete removes key from table; absent keys are not an error.
	Delete(table string, key []byte)
	// Reset drops every entry of table (the start of a full snapshot).
	Reset(table string)
}

// Ranger is a Store that can list what it holds. A sink whose store is a
// Ranger audits it against the source's digests every
// [SinkConfig.AuditEvery], which catches a store changed behind the sink's
// back (the sink's own digest only follows what the sink applied).
type Ranger interface {
	// Range calls fn for every entry of table until fn returns false. key
	// and value are valid during the call only; fn must not change the
	// store.
	Range(table string, fn func(key, value []byte) bool)
}

// MapStore is a compact in-memory [Store] and [Ranger]: per table an arena
// of records and an open-addressing index, with no Go pointer per entry and
// no allocation per Put once grown. At one million entries of 24-byte keys
// and 80-byte values it costs about 125 bytes per entry (see
// BenchmarkMapStoreMemory). It is not safe for concurrent use.
type MapStore struct {
	tables map[string]*kvTable
	hints  map[string]int
	last   *kvTable
	lastN  string
}

// NewMapStore returns an empty store.
func NewMapStore() *MapStore { return &MapStore{tables: map[string]*kvTable{}} }

func (m *MapStore) table(name string, create bool) *kvTable {
	if m.last != nil && m.lastN == name {
		return m.last
	}
	t := m.tables[name]
	if t == nil {
		if !create {
			return nil
		}
		t = newKVTableSize(m.hints[name])
		m.tables[name] = t
	}
	m.last, m.lastN = t, name
	return t
}

// Reserve sizes table's index for n entries, now (if the table is empty)
// and whenever a full copy resets it, so that it never doubles, and never
// pauses to rehash, as it fills.
func (m *MapStore) Reserve(table string, n int) {
	if m.hints == nil {
		m.hints = map[string]int{}
	}
	m.hints[table] = n
	if t := m.tables[table]; t != nil && t.live == 0 {
		m.Reset(table)
	}
}

// Put implements [Store].
func (m *MapStore) Put(table string, key, value []byte) {
	if recordSize(len(key), len(value)) > maxRecord {
		return // beyond the protocol's limits; never sent by a Source
	}
	t := m.table(table, true)
	l := t.find(key)
	if l.ref == 0 {
		t.insert(l, 0, 0, key, value)
		return
	}
	t.setValue(l, 0, 0, value)
}

// Delete implements [Store].
func (m *MapStore) Delete(table string, key []byte) {
	t := m.table(table, false)
	if t == nil {
		return
	}
	if l := t.find(key); l.ref != 0 {
		t.remove(l)
	}
}

// Reset implements [Store]: the table's memory is released.
func (m *MapStore) Reset(table string) {
	if _, ok := m.tables[table]; ok {
		delete(m.tables, table)
		m.last, m.lastN = nil, ""
	}
}

// Get returns the value of key in table. The slice points into the store:
// valid until its next change.
func (m *MapStore) Get(table string, key []byte) ([]byte, bool) {
	t := m.table(table, false)
	if t == nil {
		return nil, false
	}
	l := t.find(key)
	if l.ref == 0 {
		return nil, false
	}
	_, _, _, v := t.record(l.ref)
	return v, true
}

// Len returns the number of entries in table.
func (m *MapStore) Len(table string) int {
	if t := m.table(table, false); t != nil {
		return t.live
	}
	return 0
}

// Tables returns the names of the tables that hold at least one entry,
// sorted.
func (m *MapStore) Tables() []string {
	var names []string
	for n, t := range m.tables {
		if t.live > 0 {
			names = append(names, n)
		}
	}
	sort.Strings(names)
	return names
}

// Range implements [Ranger]: entries come in insertion order, roughly
// (a changed value moves its entry to the end).
func (m *MapStore) Range(table string, fn func(key, value []byte) bool) {
	t := m.table(table, false)
	if t == nil {
		return
	}
	t.each(func(_ uint64, _, _ byte, k, v []byte) bool { return fn(k, v) })
}

// Memory returns the bytes the store holds for its entries (arenas and
// indexes), not counting Go map overhead per table.
func (m *MapStore) Memory() int {
	n := 0
	for _, t := range m.tables {
		n += t.memory()
	}
	return n
}

// Snapshot returns a copy of the store's content: table -> key -> value,
// tables with no entries left out. For tests and diagnostics.
func (m *MapStore) Snapshot() map[string]map[string]string {
	out := map[string]map[string]string{}
	for n, t := range m.tables {
		if t.live == 0 {
			continue
		}
		tm := map[string]string{}
		t.each(func(_ uint64, _, _ byte, k, v []byte) bool {
			tm[string(k)] = string(v)
			return true
		})
		out[n] = tm
	}
	return out
}

package ctsync

// keyMap maps keys to V with little overhead: a key of at most 15 bytes
// (every IPv4 connection without a zone) is stored inline in a 16-byte
// array whose last byte is the length, so the map holds no pointer and
// no separate allocation for it; longer keys go to a string map.
type keyMap[V any] struct {
	small map[[16]byte]V
	big   map[string]V
}

func newKeyMap[V any](hint int) *keyMap[V] {
	return &keyMap[V]{small: make(map[[16]byte]V, hint), big: make(map[string]V)}
}

func smallKey(k []byte) (a [16]byte, ok bool) {
	if len(k) > 15 {
		return a, false
	}
	copy(a[:], k)
	a[15] = byte(len(k))
	return a, true
}

func (m *keyMap[V]) get(k []byte) (V, bool) {
	if a, ok := smallKey(k); ok {
		v, ok := m.small[a]
		return v, ok
	}
	v, ok := m.big[string(k)]
	return v, ok
}

func (m *keyMap[V]) has(k []byte) bool {
	_, ok := m.get(k)
	return ok
}

func (m *keyMap[V]) set(k []byte, v V) {
	if a, ok := smallKey(k); ok {
		m.small[a] = v
		return
	}
	m.big[string(k)] = v
}

func (m *keyMap[V]) del(k []byte) (V, bool) {
	if a, ok := smallKey(k); ok {
		v, ok := m.small[a]
		if ok {
			delete(m.small, a)
		}
		return v, ok
	}
	v, ok := m.big[string(k)]
	if ok {
		delete(m.big, string(k))
	}
	return v, ok
}

func (m *keyMap[V]) len() int { return len(m.small) + len(m.big) }

// each calls fn for every entry until fn returns false; k is only valid
// during the call. fn must not modify the map.
func (m *keyMap[V]) each(fn func(k []byte, v V) bool) {
	buf := make([]byte, 16)
	for a, v := range m.small {
		copy(buf, a[:])
		if !fn(buf[:a[15]], v) {
			return
		}
	}
	for s, v := range m.big {
		if !fn([]byte(s), v) {
			return
		}
	}
}

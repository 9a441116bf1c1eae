package ctsync

import "github.com/ti-mo/conntrack"

// flowDecoder decodes connection events like decodeEvent, into a Flow it
// reuses: the Source's event loop decodes one connection at a time and
// keeps nothing of it once handled (the emitter encodes it, the live set
// keeps a hash), so a heap allocation per event is not needed.
// Expectations, rare, go through decodeEvent.
type flowDecoder struct {
	box flowBox
}

// decode decodes a message of the conntrack subsystem (not expectations)
// and returns its connection, or the error decodeEvent would return for
// it. The Flow is valid until the next call.
func (d *flowDecoder) decode(m nlMsg) (*conntrack.Flow, error) {
	if len(m.data) < nfgenLen {
		return nil, errCTShort
	}
	switch uint8(m.typ) {
	case msgNew, msgDelete:
	default:
		return nil, errCTType
	}
	d.box = flowBox{}
	if !d.box.decode(nlAttrs{b: m.data[nfgenLen:]}) {
		return nil, errCTFlow
	}
	return &d.box.f, nil
}

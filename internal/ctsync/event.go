package ctsync

import (
	"github.com/mdlayher/netlink"
	"github.com/ti-mo/conntrack"
)

// decodeEvent decodes one ctnetlink message (an event, or an answer to a
// dump or get, which have the same layout) into ti-mo/conntrack's types,
// with the hand-written decoder of fastdecode.go.
func decodeEvent(m nlMsg) (conntrack.Event, error) {
	return decodeEventFast(m)
}

// decodeEventTiMo decodes m with ti-mo/conntrack's Event.Unmarshal: the
// reference decodeEventFast is tested against.
func decodeEventTiMo(m nlMsg) (conntrack.Event, error) {
	var ev conntrack.Event
	err := ev.Unmarshal(netlink.Message{
		Header: netlink.Header{
			Length:   uint32(len(m.data) + nlmsgHdrLen),
			Type:     netlink.HeaderType(m.typ),
			Flags:    netlink.HeaderFlags(m.flags),
			Sequence: m.seq,
		},
		Data: m.data,
	})
	return ev, err
}

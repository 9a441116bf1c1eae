package wire

import "errors"

// DropCounters counts dropped heartbeats by reason, for status output.
//
// The zero value is ready to use. DropCounters is not safe for concurrent
// use: the receiving goroutine owns it and hands out copies.
type DropCounters struct {
	Truncated    uint64
	BadMagic     uint64
	BadVersion   uint64
	WrongCluster uint64
	BadMAC       uint64
	Replay       uint64
	Malformed    uint64
}

// Count increments the counter of the reason err matches (with
// [errors.Is]). It does nothing for nil or for an error that matches no
// sentinel of this package.
func (c *DropCounters) Count(err error) {
	if err == nil {
		return
	}
	switch {
	case errors.Is(err, ErrTruncated):
		c.Truncated++
	case errors.Is(err, ErrBadMagic):
		c.BadMagic++
	case errors.Is(err, ErrBadVersion):
		c.BadVersion++
	case errors.Is(err, ErrWrongCluster):
		c.WrongCluster++
	case errors.Is(err, ErrBadMAC):
		c.BadMAC++
	case errors.Is(err, ErrReplay):
		c.Replay++
	case errors.Is(err, ErrMalformed):
		c.Malformed++
	}
}

// Total returns the sum of all counters.
func (c *DropCounters) Total() uint64 {
	return c.Truncated + c.BadMagic + c.BadVersion + c.WrongCluster +
		c.BadMAC + c.Replay + c.Malformed
}

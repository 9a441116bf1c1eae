package nftsets

import (
	"fmt"
	"strings"

	"golang.org/x/sys/unix"
)

// SetRef names an nftables set: family, table and set name.
type SetRef struct {
	Family string // "inet", "ip", "ip6" (also "arp", "bridge", "netdev")
	Table  string
	Set    string
}

// ReplTablePrefix starts the name of every replication table this package
// produces or accepts.
const ReplTablePrefix = "nftset:"

// families maps the nft family names to NFPROTO_* values.
var families = map[string]uint8{
	"inet":   unix.NFPROTO_INET,
	"ip":     unix.NFPROTO_IPV4,
	"ip6":    unix.NFPROTO_IPV6,
	"arp":    unix.NFPROTO_ARP,
	"bridge": unix.NFPROTO_BRIDGE,
	"netdev": unix.NFPROTO_NETDEV,
}

const setRefForm = `family/table/set, e.g. "inet/filter/blocklist" (family inet, ip, ip6, arp, bridge or netdev; names of letters, digits, '_', '.' and '-')`

// ParseSetRef parses "family/table/set", e.g. "inet/filter/blocklist", the
// form of the sync.nft_sets configuration.
func ParseSetRef(s string) (SetRef, error) {
	parts := strings.Split(s, "/")
	if len(parts) != 3 {
		return SetRef{}, fmt.Errorf("nft set %q: want %s", s, setRefForm)
	}
	r := SetRef{Family: parts[0], Table: parts[1], Set: parts[2]}
	if err := r.validate(); err != nil {
		return SetRef{}, fmt.Errorf("nft set %q: %v; want %s", s, err, setRefForm)
	}
	return r, nil
}

// ParseReplTable is the inverse of [SetRef.ReplTable].
func ParseReplTable(name string) (SetRef, error) {
	rest, ok := strings.CutPrefix(name, ReplTablePrefix)
	parts := strings.Split(rest, ":")
	if !ok || len(parts) != 3 {
		return SetRef{}, fmt.Errorf("replication table %q: want %s<family>:<table>:<set>", name, ReplTablePrefix)
	}
	r := SetRef{Family: parts[0], Table: parts[1], Set: parts[2]}
	if err := r.validate(); err != nil {
		return SetRef{}, fmt.Errorf("replication table %q: %v", name, err)
	}
	return r, nil
}

// String returns the configuration form, "inet/filter/blocklist".
func (r SetRef) String() string { return r.Family + "/" + r.Table + "/" + r.Set }

// ReplTable returns the name of the replication table that carries the
// set's elements: "nftset:inet:filter:blocklist".
func (r SetRef) ReplTable() string {
	return ReplTablePrefix + r.Family + ":" + r.Table + ":" + r.Set
}

func (r SetRef) validate() error {
	if _, ok := families[r.Family]; !ok {
		return fmt.Errorf("unknown family %q", r.Family)
	}
	if err := validName("table", r.Table); err != nil {
		return err
	}
	return validName("set", r.Set)
}

func validName(what, s string) error {
	if s == "" {
		return fmt.Errorf("empty %s name", what)
	}
	if len(s) >= unix.NFT_SET_MAXNAMELEN {
		return fmt.Errorf("%s name longer than %d bytes", what, unix.NFT_SET_MAXNAMELEN-1)
	}
	for _, c := range []byte(s) {
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '_', c == '.', c == '-':
		default:
			return fmt.Errorf("%s name %q has the character %q", what, s, c)
		}
	}
	return nil
}

func (r SetRef) family() uint8 { return families[r.Family] }

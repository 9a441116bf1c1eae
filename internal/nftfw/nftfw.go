package nftfw

import (
	"errors"
	"fmt"
	"net/netip"
	"syscall"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/vishvananda/netns"
)

// TableName is the name of the inet table that Apply owns.
const TableName = "tandem_fw"

// BlocklistSet is the name of the dynamic set of blocked IPv4 source
// addresses in table inet tandem_fw: "set blocklist { type ipv4_addr;
// flags timeout; }". It starts empty; elements are added at run time
// ("nft add element inet tandem_fw blocklist { 192.0.2.7 timeout 1h }"), as
// an IPS would, and the forward chain drops every packet from them.
const BlocklistSet = "blocklist"

// FTPHelper is the name of the ct helper object ("ct helper ftp-standard
// { type "ftp" protocol tcp; }") that the prerouting chain assigns to FTP
// control connections from the LAN.
const FTPHelper = "ftp-standard"

// ftpPort is the FTP control port the helper is assigned to.
const ftpPort = 21

// ftpHelperKernelName is the kernel's name of the FTP conntrack helper; a
// variable so that a test can name one no kernel has.
var ftpHelperKernelName = "ftp"

// nfprotoIPv4 is NFPROTO_IPV4 from linux/netfilter.h.
const nfprotoIPv4 = 2

// ifNameSize is IFNAMSIZ: interface names compare as 16 zero-padded bytes.
const ifNameSize = 16

// Rules describes the firewall of one unit.
type Rules struct {
	// LAN is the name of the inside interface (new connections start here).
	LAN string
	// WAN is the name of the outside interface (traffic leaving it is
	// source-NATed).
	WAN string
	// SNATTo is the WAN virtual IP; it must be IPv4.
	SNATTo netip.Addr
}

// Validate reports what is wrong with r, if anything.
func (r Rules) Validate() error {
	var errs []error
	for _, f := range []struct{ field, name string }{{"LAN", r.LAN}, {"WAN", r.WAN}} {
		switch {
		case f.name == "":
			errs = append(errs, fmt.Errorf("nftfw: %s interface name is empty", f.field))
		case len(f.name) >= ifNameSize:
			errs = append(errs, fmt.Errorf("nftfw: %s interface name %q is longer than %d bytes", f.field, f.name, ifNameSize-1))
		}
	}
	if r.LAN != "" && r.LAN == r.WAN {
		errs = append(errs, fmt.Errorf("nftfw: LAN and WAN are the same interface %q", r.LAN))
	}
	if !r.SNATTo.IsValid() || !r.SNATTo.Unmap().Is4() {
		errs = append(errs, fmt.Errorf("nftfw: SNATTo %v is not an IPv4 address", r.SNATTo))
	}
	return errors.Join(errs...)
}

// Apply replaces table inet tandem_fw in the namespace nsh with the ruleset
// for r. The old table (if any) is deleted and the new one created in a
// single netlink transaction, so packets see either the old ruleset or the
// new one, never a mix or none. Applying the same Rules twice yields the
// same ruleset.
//
// A kernel without the FTP conntrack helper (nf_conntrack_ftp) refuses the
// ct helper object with ENOENT; Apply then installs the same ruleset without
// the helper object and its prerouting rule (FTP's data connections are then
// not RELATED, everything else is the same). [HasFTPHelper] tells which.
func Apply(nsh netns.NsHandle, r Rules) error {
	if err := r.Validate(); err != nil {
		return err
	}
	err := apply(nsh, r, true)
	if errors.Is(err, syscall.ENOENT) {
		if err2 := apply(nsh, r, false); err2 == nil {
			return nil
		}
	}
	return err
}

// HasFTPHelper reports whether table inet tandem_fw in the namespace nsh
// has the FTP ct helper object (see Apply).
func HasFTPHelper(nsh netns.NsHandle) (bool, error) {
	c, err := conn(nsh)
	if err != nil {
		return false, err
	}
	t := &nftables.Table{Name: TableName, Family: nftables.TableFamilyINet}
	objs, err := c.GetNamedObjects(t)
	if err != nil {
		return false, fmt.Errorf("nftfw: list the objects of table inet %s: %w", TableName, err)
	}
	for _, o := range objs {
		if no, ok := o.(*nftables.NamedObj); ok && no.Name == FTPHelper && no.Type == nftables.ObjTypeCtHelper {
			return true, nil
		}
	}
	return false, nil
}

// apply is one transaction of Apply, with or without the FTP helper.
func apply(nsh netns.NsHandle, r Rules, ftp bool) error {
	c, err := conn(nsh)
	if err != nil {
		return err
	}
	t := &nftables.Table{Name: TableName, Family: nftables.TableFamilyINet}
	// "add" (create if missing) then delete: deleting can then never fail
	// with ENOENT, and the whole sequence is one transaction.
	c.AddTable(t)
	c.DelTable(t)
	c.AddTable(t)

	blocklist := &nftables.Set{Table: t, Name: BlocklistSet, KeyType: nftables.TypeIPAddr, HasTimeout: true}
	if err := c.AddSet(blocklist, nil); err != nil {
		return fmt.Errorf("nftfw: set %s: %w", BlocklistSet, err)
	}
	if ftp {
		c.AddObj(&nftables.NamedObj{Table: t, Name: FTPHelper, Type: nftables.ObjTypeCtHelper,
			Obj: &expr.CtHelper{Name: ftpHelperKernelName, L4Proto: syscall.IPPROTO_TCP}})
		accept := nftables.ChainPolicyAccept
		pre := c.AddChain(&nftables.Chain{
			Name:     "prerouting",
			Table:    t,
			Type:     nftables.ChainTypeFilter,
			Hooknum:  nftables.ChainHookPrerouting,
			Priority: nftables.ChainPriorityFilter,
			Policy:   &accept,
		})
		c.AddRule(&nftables.Rule{Table: t, Chain: pre, Exprs: ftpHelperRule(r)})
	}

	drop := nftables.ChainPolicyDrop
	fwd := c.AddChain(&nftables.Chain{
		Name:     "forward",
		Table:    t,
		Type:     nftables.ChainTypeFilter,
		Hooknum:  nftables.ChainHookForward,
		Priority: nftables.ChainPriorityFilter,
		Policy:   &drop,
	})
	post := c.AddChain(&nftables.Chain{
		Name:     "postrouting",
		Table:    t,
		Type:     nftables.ChainTypeNAT,
		Hooknum:  nftables.ChainHookPostrouting,
		Priority: nftables.ChainPriorityNATSource,
	})

	for _, exprs := range forwardRules(r, blocklist) {
		c.AddRule(&nftables.Rule{Table: t, Chain: fwd, Exprs: exprs})
	}
	c.AddRule(&nftables.Rule{Table: t, Chain: post, Exprs: snatRule(r)})

	if err := c.Flush(); err != nil {
		return fmt.Errorf("nftfw: apply table inet %s: %w", TableName, err)
	}
	return nil
}

// Remove deletes table inet tandem_fw from the namespace nsh. Removing a
// table that does not exist is not an error.
func Remove(nsh netns.NsHandle) error {
	c, err := conn(nsh)
	if err != nil {
		return err
	}
	t := &nftables.Table{Name: TableName, Family: nftables.TableFamilyINet}
	c.AddTable(t)
	c.DelTable(t)
	if err := c.Flush(); err != nil {
		return fmt.Errorf("nftfw: remove table inet %s: %w", TableName, err)
	}
	return nil
}

func conn(nsh netns.NsHandle) (*nftables.Conn, error) {
	if !nsh.IsOpen() {
		return nil, errors.New("nftfw: namespace handle is not open")
	}
	c, err := nftables.New(nftables.WithNetNSFd(int(nsh)))
	if err != nil {
		return nil, fmt.Errorf("nftfw: netlink connection: %w", err)
	}
	return c, nil
}

// ftpHelperRule returns: iifname LAN tcp dport 21 ct helper set "ftp-standard"
//
// It sits in a filter chain at the prerouting hook, where nftables'
// documentation recommends assigning helpers: after conntrack has created
// the entry of the first packet, before it is confirmed.
func ftpHelperRule(r Rules) []expr.Any {
	const dportOffset = 2 // bytes 2-3 of the TCP header
	return append(ifName(expr.MetaKeyIIFNAME, r.LAN),
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{syscall.IPPROTO_TCP}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: dportOffset, Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.BigEndian.PutUint16(ftpPort)},
		&expr.Objref{Type: int(nftables.ObjTypeCtHelper), Name: FTPHelper},
	)
}

// forwardRules returns, in order:
//
//	ip saddr @blocklist counter drop
//	ct state established,related accept
//	ct state invalid counter drop
//	tcp flags & (fin|syn|rst|ack) != syn ct state new counter drop
//	iifname LAN oifname WAN ct state new accept
//
// The blocklist comes first, before the established/related accept: an
// address blocked at run time loses its established connections too, at
// once (what an IPS blocking an attacker wants), not only new ones.
func forwardRules(r Rules, blocklist *nftables.Set) [][]expr.Any {
	accept := &expr.Verdict{Kind: expr.VerdictAccept}
	drop := &expr.Verdict{Kind: expr.VerdictDrop}
	const (
		tcpFlagsOffset = 13 // byte 13 of the TCP header holds the flags
		fin, syn, rst  = 0x01, 0x02, 0x04
		ack            = 0x10
	)
	tcpNotSyn := []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{syscall.IPPROTO_TCP}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: tcpFlagsOffset, Len: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 1, Mask: []byte{fin | syn | rst | ack}, Xor: []byte{0}},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: []byte{syn}},
	}
	const saddrOffset = 12 // bytes 12-15 of the IPv4 header
	blocked := []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{nfprotoIPv4}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: saddrOffset, Len: 4},
		&expr.Lookup{SourceRegister: 1, SetName: blocklist.Name, SetID: blocklist.ID},
		&expr.Counter{}, drop,
	}
	return [][]expr.Any{
		blocked,
		append(ctState(expr.CtStateBitESTABLISHED|expr.CtStateBitRELATED), accept),
		append(ctState(expr.CtStateBitINVALID), &expr.Counter{}, drop),
		append(append(tcpNotSyn, ctState(expr.CtStateBitNEW)...), &expr.Counter{}, drop),
		append(append(append(ifName(expr.MetaKeyIIFNAME, r.LAN), ifName(expr.MetaKeyOIFNAME, r.WAN)...),
			ctState(expr.CtStateBitNEW)...), accept),
	}
}

// snatRule returns: iifname LAN oifname WAN snat ip to SNATTo. Only
// forwarded traffic is translated: the units' own packets on the WAN (their
// heartbeats, VRRP in the keepalived benchmark) keep their own source.
func snatRule(r Rules) []expr.Any {
	addr := r.SNATTo.Unmap().As4()
	return append(append(ifName(expr.MetaKeyIIFNAME, r.LAN), ifName(expr.MetaKeyOIFNAME, r.WAN)...),
		&expr.Immediate{Register: 1, Data: addr[:]},
		&expr.NAT{Type: expr.NATTypeSourceNAT, Family: nfprotoIPv4, RegAddrMin: 1},
	)
}

// ctState matches when any of the given conntrack state bits is set.
func ctState(bits uint32) []expr.Any {
	return []expr.Any{
		&expr.Ct{Register: 1, Key: expr.CtKeySTATE},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(bits), Xor: binaryutil.NativeEndian.PutUint32(0)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: binaryutil.NativeEndian.PutUint32(0)},
	}
}

// ifName matches the input or output interface name exactly.
func ifName(key expr.MetaKey, name string) []expr.Any {
	b := make([]byte, ifNameSize)
	copy(b, name)
	return []expr.Any{
		&expr.Meta{Key: key, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: b},
	}
}

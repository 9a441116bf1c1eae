package heartbeat

import "golang.org/x/sys/unix"

// setSocketOptions: IP_FREEBIND lets the socket bind an address that is not
// (yet) on the box; the network-control traffic class (CS6, as VRRP uses)
// and a high SO_PRIORITY keep heartbeats ahead of bulk traffic in queues.
func setSocketOptions(fd int, network string) error {
	if network == "udp6" {
		if err := unix.SetsockoptInt(fd, unix.SOL_IPV6, unix.IPV6_FREEBIND, 1); err != nil {
			return err
		}
		_ = unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_TCLASS, 0xc0)
	} else {
		if err := unix.SetsockoptInt(fd, unix.SOL_IP, unix.IP_FREEBIND, 1); err != nil {
			return err
		}
		_ = unix.SetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_TOS, 0xc0)
	}
	_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_PRIORITY, 6)
	return nil
}

package syncchan

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"math/big"
	"time"
)

// Authenticator proves to the peer that this unit is the other member of
// the cluster, and checks the peer's proof. Both are bound to the TLS
// session they run on (through its exported keying material), so a proof
// is worth nothing on any other connection.
//
// The HMAC over the cluster key (NewKeyAuthenticator) is the one
// implementation today. A later one may check the peer's certificate
// (cs.PeerCertificates) against a paired one instead.
type Authenticator interface {
	// Proof returns the proof that this unit, in the given role, sends on
	// the session cs.
	Proof(cs *tls.ConnectionState, role uint8) ([]byte, error)
	// Verify checks the proof received from the peer, which must be in the
	// given role. It returns nil only for a genuine proof.
	Verify(cs *tls.ConnectionState, role uint8, proof []byte) error
}

const (
	// exporterLabel is the TLS exporter label (RFC 8446 section 7.5).
	exporterLabel = "tandem sync v1"
	// proofLabel starts every HMAC input.
	proofLabel = "tandem sync v1 proof"
	// keyInfo derives the proof key from the cluster key.
	keyInfo = "tandem sync v1 proof key"
	ekmLen  = 32
)

type keyAuth struct{ key []byte }

// NewKeyAuthenticator returns the Authenticator of the shared cluster key:
// the proof of a unit in role r on a TLS session is
//
//	HMAC-SHA256(K, "tandem sync v1 proof" || r || EKM)
//
// where EKM = ExportKeyingMaterial("tandem sync v1", nil, 32) of the session
// and K = HKDF-SHA256(cluster key, salt nil, info "tandem sync v1 proof
// key"), so that this use of the key is separated from every other (the
// heartbeat MACs use the key itself).
func NewKeyAuthenticator(key []byte) (Authenticator, error) {
	if len(key) < MinKeySize {
		return nil, fmt.Errorf("syncchan: cluster key of %d bytes; at least %d required", len(key), MinKeySize)
	}
	k, err := hkdf.Key(sha256.New, key, nil, keyInfo, sha256.Size)
	if err != nil {
		return nil, fmt.Errorf("syncchan: derive the proof key: %w", err)
	}
	return &keyAuth{key: k}, nil
}

func (a *keyAuth) mac(cs *tls.ConnectionState, role uint8) ([]byte, error) {
	if cs.Version != tls.VersionTLS13 {
		// Exported keying material is bound to the session only in TLS
		// 1.3 (or 1.2 with extended master secret): insist on 1.3.
		return nil, fmt.Errorf("TLS version 0x%04x; the sync channel needs TLS 1.3", cs.Version)
	}
	ekm, err := cs.ExportKeyingMaterial(exporterLabel, nil, ekmLen)
	if err != nil {
		return nil, fmt.Errorf("export keying material: %w", err)
	}
	m := hmac.New(sha256.New, a.key)
	m.Write([]byte(proofLabel))
	m.Write([]byte{role})
	m.Write(ekm)
	return m.Sum(nil), nil
}

func (a *keyAuth) Proof(cs *tls.ConnectionState, role uint8) ([]byte, error) {
	return a.mac(cs, role)
}

func (a *keyAuth) Verify(cs *tls.ConnectionState, role uint8, proof []byte) error {
	want, err := a.mac(cs, role)
	if err != nil {
		return err
	}
	if !hmac.Equal(want, proof) {
		return errors.New("the proof does not match: the cluster keys differ, or the proof was made for another session or role")
	}
	return nil
}

// newTLSConfigs returns the server and client TLS configurations of one
// link, with a fresh self-signed certificate. Certificates are not verified
// (there is no PKI): TLS gives confidentiality, integrity and a session
// secret, and the Authenticator's proof, bound to that secret, authenticates
// both ends.
func newTLSConfigs() (server, client *tls.Config, err error) {
	cert, err := ephemeralCert()
	if err != nil {
		return nil, nil, err
	}
	base := &tls.Config{
		MinVersion:                  tls.VersionTLS13,
		MaxVersion:                  tls.VersionTLS13,
		Certificates:                []tls.Certificate{cert},
		SessionTicketsDisabled:      true, // every connection is a full handshake
		DynamicRecordSizingDisabled: true, // full 16 KiB records from the start
	}
	server = base.Clone()
	// Ask for the client's certificate: unverified today, it is there for
	// an Authenticator that pairs certificates.
	server.ClientAuth = tls.RequireAnyClientCert
	client = base.Clone()
	client.ServerName = "tandem-sync"
	// The peer is authenticated by the proof after the handshake, not by
	// its certificate; see the package documentation.
	client.InsecureSkipVerify = true
	return server, client, nil
}

// ephemeralCert makes a self-signed ECDSA P-256 certificate that lives as
// long as the process.
func ephemeralCert() (tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("syncchan: generate key: %w", err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("syncchan: serial: %w", err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: "tandem sync (ephemeral)"},
		// Validity is never checked; make it wide so a unit booting with a
		// wrong clock still builds a well-formed certificate.
		NotBefore:   now.Add(-48 * time.Hour),
		NotAfter:    now.Add(20 * 365 * 24 * time.Hour),
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("syncchan: self-sign: %w", err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, nil
}

package identity

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// ParseCertificatesPEM parses every CERTIFICATE block of a PEM document. It
// fails if a block of another type appears, if a certificate does not parse,
// or if there is none; the error names the block (counting from 1).
func ParseCertificatesPEM(b []byte) ([]*x509.Certificate, error) {
	var certs []*x509.Certificate
	for n := 1; ; n++ {
		var block *pem.Block
		block, b = pem.Decode(b)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("%w: block %d is %q, want \"CERTIFICATE\"", ErrInvalidPEM, n, block.Type)
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("%w: block %d: %v", ErrInvalidPEM, n, err)
		}
		certs = append(certs, c)
	}
	if len(bytes.TrimSpace(b)) != 0 && len(certs) == 0 {
		return nil, fmt.Errorf("%w: no PEM block found", ErrInvalidPEM)
	}
	if len(certs) == 0 {
		return nil, fmt.Errorf("%w: no CERTIFICATE block", ErrInvalidPEM)
	}
	return certs, nil
}

// ParsePrivateKeyPEM parses the first PEM block as a private key: PKCS#8
// ("PRIVATE KEY"), SEC 1 ("EC PRIVATE KEY") or PKCS#1 ("RSA PRIVATE KEY").
// Only ECDSA, RSA and Ed25519 keys are accepted.
func ParsePrivateKeyPEM(b []byte) (crypto.Signer, error) {
	block, _ := pem.Decode(b)
	if block == nil {
		return nil, fmt.Errorf("%w: no PEM block found in private key", ErrInvalidPEM)
	}
	var (
		key any
		err error
	)
	switch block.Type {
	case "PRIVATE KEY":
		key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
	case "EC PRIVATE KEY":
		key, err = x509.ParseECPrivateKey(block.Bytes)
	case "RSA PRIVATE KEY":
		key, err = x509.ParsePKCS1PrivateKey(block.Bytes)
	default:
		return nil, fmt.Errorf("%w: private key block is %q, want \"PRIVATE KEY\", \"EC PRIVATE KEY\" or \"RSA PRIVATE KEY\"", ErrInvalidPEM, block.Type)
	}
	if err != nil {
		return nil, fmt.Errorf("%w: %s block: %v", ErrInvalidPEM, block.Type, err)
	}
	switch k := key.(type) {
	case *ecdsa.PrivateKey:
		return k, nil
	case *rsa.PrivateKey:
		return k, nil
	case ed25519.PrivateKey:
		return k, nil
	default:
		return nil, fmt.Errorf("%w: unsupported private key type %T", ErrInvalidPEM, key)
	}
}

// EncodeCertificatesPEM encodes certificates as consecutive CERTIFICATE
// blocks.
func EncodeCertificatesPEM(certs []*x509.Certificate) []byte {
	var buf bytes.Buffer
	for _, c := range certs {
		_ = pem.Encode(&buf, &pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
	}
	return buf.Bytes()
}

// EncodePrivateKeyPEM encodes a private key as a PKCS#8 "PRIVATE KEY" block.
func EncodePrivateKeyPEM(key crypto.Signer) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("identity: encode private key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// File names WriteFiles uses and NewFileSource users commonly point at.
const (
	CertFileName   = "cert.pem"   // leaf certificate followed by intermediates
	KeyFileName    = "key.pem"    // PKCS#8 private key, mode 0600
	BundleFileName = "bundle.pem" // trust bundle (roots)
)

// WriteFiles writes an SVID and its bundle into dir as cert.pem, key.pem
// (mode 0600) and bundle.pem, creating dir if needed. Each file is written
// to a temporary name and renamed into place, so a FileSource watching dir
// never reads a half-written file.
func WriteFiles(dir string, svid *x509svid.SVID, bundle *x509bundle.Bundle) error {
	if err := checkPair(svid, bundle); err != nil {
		return err
	}
	keyPEM, err := EncodePrivateKeyPEM(svid.PrivateKey)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("identity: %w", err)
	}
	files := []struct {
		name string
		data []byte
		mode os.FileMode
	}{
		{KeyFileName, keyPEM, 0o600},
		{CertFileName, EncodeCertificatesPEM(svid.Certificates), 0o644},
		{BundleFileName, EncodeCertificatesPEM(bundle.X509Authorities()), 0o644},
	}
	for _, f := range files {
		if err := writeFileAtomic(filepath.Join(dir, f.name), f.data, f.mode); err != nil {
			return err
		}
	}
	return nil
}

func writeFileAtomic(path string, data []byte, mode os.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return fmt.Errorf("identity: %w", err)
	}
	_, werr := tmp.Write(data)
	cerr := tmp.Close()
	if err := errors.Join(werr, cerr, os.Chmod(tmp.Name(), mode)); err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("identity: write %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("identity: %w", err)
	}
	return nil
}

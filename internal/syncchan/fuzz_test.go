package syncchan

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"runtime"
	"testing"
)

// fuzzMax is small so that seeds, and the inputs grown from them, stay
// small: the fuzzer minimizes every new interesting input, and that time
// grows fast with the input's length.
const fuzzMax = 100

// FuzzReadFrame feeds the frame decoder arbitrary streams, in both phases.
// It must never panic, never return a payload over its limit (so never
// allocate one), only fail with the errors of the protocol, and whatever it
// accepts must be exactly the bytes it consumed.
func FuzzReadFrame(f *testing.F) {
	hello := appendHello(nil, wireHello{Hello: Hello{ClusterID: 7, Role: 1, Software: [3]uint8{0, 1, 0}, Schema: 1, BootID: 42}, proto: 1, maxFrame: 4096})
	seeds := [][]byte{
		appendFrame(nil, ftData, []byte("hello")),
		append(appendFrame(nil, ftPing, nil), appendFrame(nil, ftData, make([]byte, fuzzMax))...),
		appendReason(nil, ftBye, "shutting down"),
		appendFrame(nil, ftAuth, make([]byte, 32)),
		appendFrame(nil, ftAuth, make([]byte, maxControlPayload+1)),
		append(appendFrame(nil, ftHello, hello), appendFrame(nil, ftReady, nil)...),
		appendFrame(nil, ftHello, []byte{2, 0xff}),
		appendReason(nil, ftRefuse, "cluster id mismatch"),
		appendHeader(nil, ftData, fuzzMax+1),
		{0xff, 0xff, 0xff, 0xff, 0},
		{0, 0, 0, 0, 0},
		{0, 0, 0, 9, 0, 1, 2},
		{0, 0},
		{},
	}
	for _, s := range seeds {
		f.Add(s, true)
		f.Add(s, false)
	}
	f.Fuzz(func(t *testing.T, data []byte, established bool) {
		// A tiny buffer makes every frame straddle refills.
		fr := &frameReader{r: bufio.NewReaderSize(bytes.NewReader(data), 16), max: fuzzMax}
		off := 0
		for {
			typ, p, err := fr.next(established)
			if err != nil {
				if !errors.Is(err, io.EOF) && !errors.Is(err, ErrTruncated) &&
					!errors.Is(err, ErrProtocol) && !errors.Is(err, ErrFrameTooLarge) {
					t.Fatalf("unexpected error %v", err)
				}
				if errors.Is(err, io.EOF) && off != len(data) {
					t.Fatalf("EOF at %d of %d bytes", off, len(data))
				}
				return
			}
			limit, ok := payloadLimit(typ, established, fuzzMax)
			if !ok || len(p) > limit || cap(p) > max(limit, maxControlPayload) {
				t.Fatalf("accepted a %v frame of %d bytes (cap %d), limit %d, allowed %v", typ, len(p), cap(p), limit, ok)
			}
			enc := appendFrame(nil, typ, p)
			if !bytes.Equal(enc, data[off:off+len(enc)]) {
				t.Fatalf("frame %v re-encodes as %x, input was %x", typ, enc, data[off:off+len(enc)])
			}
			off += len(enc)
			if typ == ftHello {
				h, err := parseHello(p)
				if err == nil && h.proto == protoVersion && !bytes.Equal(appendHello(nil, h), p) {
					t.Fatalf("hello %x re-encodes as %x", p, appendHello(nil, h))
				}
			}
		}
	})
}

// A header announcing a huge frame is refused before anything is
// allocated for it.
func TestReadFrameAllocatesNothingForRefusedFrames(t *testing.T) {
	for _, hdr := range [][]byte{
		{0xff, 0xff, 0xff, 0xff, byte(ftData)},
		{0x7f, 0xff, 0xff, 0xff, byte(ftHello)},
		appendHeader(nil, ftData, DefaultMaxFrame+1),
	} {
		var before, after runtime.MemStats
		fr := &frameReader{r: bufio.NewReader(bytes.NewReader(hdr)), max: DefaultMaxFrame}
		runtime.GC()
		runtime.ReadMemStats(&before)
		_, _, err := fr.next(false)
		_, _, err2 := (&frameReader{r: bufio.NewReader(bytes.NewReader(hdr)), max: DefaultMaxFrame}).next(true)
		runtime.ReadMemStats(&after)
		if err == nil || err2 == nil {
			t.Errorf("header %x accepted: %v, %v", hdr, err, err2)
		}
		if grew := after.TotalAlloc - before.TotalAlloc; grew > 64<<10 {
			t.Errorf("header %x: %d bytes allocated", hdr, grew)
		}
	}
}

// Control frames cost no allocation; a data frame one (its payload).
func TestReadFrameAllocations(t *testing.T) {
	var stream []byte
	for range 1000 {
		stream = appendFrame(stream, ftPing, nil)
	}
	r := bytes.NewReader(stream)
	fr := &frameReader{r: bufio.NewReader(r), max: 1024}
	allocs := testing.AllocsPerRun(500, func() {
		if _, _, err := fr.next(true); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Errorf("%v allocations per ping", allocs)
	}
	stream = stream[:0]
	for range 1000 {
		stream = appendFrame(stream, ftData, make([]byte, 100))
	}
	fr = &frameReader{r: bufio.NewReader(bytes.NewReader(stream)), max: 1024}
	allocs = testing.AllocsPerRun(500, func() {
		if _, _, err := fr.next(true); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 1 {
		t.Errorf("%v allocations per data frame; want 1", allocs)
	}
}

func TestHelloRoundTrip(t *testing.T) {
	h := wireHello{Hello: Hello{ClusterID: 7, Role: 2, Software: [3]uint8{1, 2, 3}, Schema: 9, BootID: 1 << 60}, proto: 1, maxFrame: 1 << 22}
	p := appendHello(nil, h)
	if len(p) != helloSize {
		t.Fatalf("hello of %d bytes; want %d", len(p), helloSize)
	}
	got, err := parseHello(p)
	if err != nil || got != h {
		t.Errorf("parseHello = %+v, %v; want %+v", got, err, h)
	}
	if _, err := parseHello(p[:helloSize-1]); !errors.Is(err, ErrProtocol) {
		t.Errorf("short hello: %v", err)
	}
	if got, err := parseHello([]byte{3, 1}); err != nil || got.proto != 3 {
		t.Errorf("hello of version 3: %+v, %v; want the version only", got, err)
	}
}

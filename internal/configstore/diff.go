package configstore

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"strings"
	"unicode/utf8"
)

// diffContext is the number of unchanged lines around each change.
const diffContext = 3

// maxLCSCells bounds the LCS table (after the common prefix and suffix are
// trimmed); past it the changed middle is shown as removed then added,
// still a correct diff, only not a minimal one.
const maxLCSCells = 4 << 20

type opKind byte

const (
	opEqual opKind = ' '
	opDel   opKind = '-'
	opIns   opKind = '+'
)

type diffOp struct {
	kind opKind
	a, b int // line index in a (equal, del) and b (equal, ins)
}

// splitLines splits text after each '\n'; the last line may lack one.
func splitLines(s []byte) []string {
	if len(s) == 0 {
		return nil
	}
	lines := strings.SplitAfter(string(s), "\n")
	if lines[len(lines)-1] == "" {
		lines = lines[:len(lines)-1]
	}
	return lines
}

func isText(b []byte) bool {
	return utf8.Valid(b) && bytes.IndexByte(b, 0) < 0
}

// unifiedDiff returns a unified diff of a and b with the given file labels,
// or a one-line note when either side is binary.
func unifiedDiff(from, to string, a, b []byte) string {
	if !isText(a) || !isText(b) {
		ha, hb := sha256.Sum256(a), sha256.Sum256(b)
		return fmt.Sprintf("Binary documents %s and %s differ (sha256 %x, %x)\n", from, to, ha[:8], hb[:8])
	}
	la, lb := splitLines(a), splitLines(b)
	ops := lineDiff(la, lb)
	var out strings.Builder
	fmt.Fprintf(&out, "--- %s\n+++ %s\n", from, to)
	for i := 0; i < len(ops); {
		// Find the next change.
		for i < len(ops) && ops[i].kind == opEqual {
			i++
		}
		if i == len(ops) {
			break
		}
		start := max(i-diffContext, 0)
		// Extend the hunk while changes are within 2*context of each other.
		end := i
		for end < len(ops) {
			if ops[end].kind != opEqual {
				end++
				continue
			}
			run := end
			for run < len(ops) && ops[run].kind == opEqual {
				run++
			}
			if run == len(ops) || run-end > 2*diffContext {
				end = min(end+diffContext, len(ops))
				break
			}
			end = run
		}
		writeHunk(&out, ops[start:end], la, lb)
		i = end
	}
	return out.String()
}

func writeHunk(out *strings.Builder, ops []diffOp, la, lb []string) {
	aStart, bStart, aLen, bLen := -1, -1, 0, 0
	for _, op := range ops {
		switch op.kind {
		case opEqual:
			if aStart < 0 {
				aStart = op.a
			}
			if bStart < 0 {
				bStart = op.b
			}
			aLen++
			bLen++
		case opDel:
			if aStart < 0 {
				aStart = op.a
			}
			aLen++
		case opIns:
			if bStart < 0 {
				bStart = op.b
			}
			bLen++
		}
	}
	// An empty side starts at the line before, per the unified format.
	if aStart < 0 {
		aStart = insertPoint(ops, true)
	} else {
		aStart++
	}
	if bStart < 0 {
		bStart = insertPoint(ops, false)
	} else {
		bStart++
	}
	fmt.Fprintf(out, "@@ -%s +%s @@\n", hunkRange(aStart, aLen), hunkRange(bStart, bLen))
	for _, op := range ops {
		var line string
		switch op.kind {
		case opEqual, opDel:
			line = la[op.a]
		case opIns:
			line = lb[op.b]
		}
		out.WriteByte(byte(op.kind))
		out.WriteString(line)
		if !strings.HasSuffix(line, "\n") {
			out.WriteString("\n\\ No newline at end of file\n")
		}
	}
}

// insertPoint is the line number before a hunk that has no lines on one
// side: the a (or b) position carried by the hunk's first op.
func insertPoint(ops []diffOp, sideA bool) int {
	if sideA {
		return ops[0].a
	}
	return ops[0].b
}

func hunkRange(start, n int) string {
	if n == 1 {
		return fmt.Sprint(start)
	}
	return fmt.Sprintf("%d,%d", start, n)
}

// lineDiff returns an edit script turning a into b, from a longest common
// subsequence of lines. Every op carries both positions: for a deletion, b
// is where the next b line would be; for an insertion, a likewise.
func lineDiff(a, b []string) []diffOp {
	var ops []diffOp
	pre := 0
	for pre < len(a) && pre < len(b) && a[pre] == b[pre] {
		ops = append(ops, diffOp{opEqual, pre, pre})
		pre++
	}
	suf := 0
	for suf < len(a)-pre && suf < len(b)-pre && a[len(a)-1-suf] == b[len(b)-1-suf] {
		suf++
	}
	ma, mb := a[pre:len(a)-suf], b[pre:len(b)-suf]
	n, m := len(ma), len(mb)
	if n*m > maxLCSCells || n == 0 || m == 0 {
		for i := range n {
			ops = append(ops, diffOp{opDel, pre + i, pre})
		}
		for j := range m {
			ops = append(ops, diffOp{opIns, pre + n, pre + j})
		}
	} else {
		// lcs[i][j]: LCS length of ma[i:] and mb[j:].
		w := m + 1
		lcs := make([]int32, (n+1)*w)
		for i := n - 1; i >= 0; i-- {
			for j := m - 1; j >= 0; j-- {
				if ma[i] == mb[j] {
					lcs[i*w+j] = lcs[(i+1)*w+j+1] + 1
				} else {
					lcs[i*w+j] = max(lcs[(i+1)*w+j], lcs[i*w+j+1])
				}
			}
		}
		i, j := 0, 0
		for i < n || j < m {
			switch {
			case i < n && j < m && ma[i] == mb[j]:
				ops = append(ops, diffOp{opEqual, pre + i, pre + j})
				i++
				j++
			case i < n && (j == m || lcs[(i+1)*w+j] >= lcs[i*w+j+1]):
				// Deletions before insertions, as diff(1) prints them.
				ops = append(ops, diffOp{opDel, pre + i, pre + j})
				i++
			default:
				ops = append(ops, diffOp{opIns, pre + i, pre + j})
				j++
			}
		}
	}
	for k := range suf {
		ops = append(ops, diffOp{opEqual, len(a) - suf + k, len(b) - suf + k})
	}
	return ops
}

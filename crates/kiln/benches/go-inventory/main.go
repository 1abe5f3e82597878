// An inventory report: validated items, a templated listing, and a gzip'd, checksummed JSON
// export. It exists to give `go build` real work: it pulls in encoding/json, text/template,
// regexp, compress/gzip and crypto/sha256 with everything they depend on.
package main

import (
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"os"
	"regexp"
	"sort"
	"strings"
	"sync"
	"text/template"
	"time"
)

type Item struct {
	SKU      string    `json:"sku"`
	Name     string    `json:"name"`
	Quantity int       `json:"quantity"`
	Updated  time.Time `json:"updated"`
}

type Inventory struct {
	mu    sync.Mutex
	items map[string]Item
}

var skuPattern = regexp.MustCompile(`^[A-Z]{3}-[0-9]{4}$`)

var listing = template.Must(template.New("listing").Parse(
	"{{range .}}{{.SKU}}\t{{.Quantity}}\t{{.Name}}\n{{end}}"))

func (inv *Inventory) Put(item Item) error {
	if !skuPattern.MatchString(item.SKU) {
		return fmt.Errorf("bad SKU %q", item.SKU)
	}
	inv.mu.Lock()
	defer inv.mu.Unlock()
	item.Updated = time.Now().UTC()
	inv.items[item.SKU] = item
	return nil
}

func (inv *Inventory) Sorted() []Item {
	inv.mu.Lock()
	defer inv.mu.Unlock()
	items := make([]Item, 0, len(inv.items))
	for _, item := range inv.items {
		items = append(items, item)
	}
	sort.Slice(items, func(i, j int) bool { return items[i].SKU < items[j].SKU })
	return items
}

// Export returns the inventory as gzip'd JSON and the SHA-256 of the uncompressed JSON.
func (inv *Inventory) Export() ([]byte, string, error) {
	raw, err := json.Marshal(inv.Sorted())
	if err != nil {
		return nil, "", err
	}
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	if _, err := zw.Write(raw); err != nil {
		return nil, "", err
	}
	if err := zw.Close(); err != nil {
		return nil, "", err
	}
	sum := sha256.Sum256(raw)
	return buf.Bytes(), hex.EncodeToString(sum[:]), nil
}

func main() {
	export := flag.String("export", "", "write the gzip'd JSON export to this file")
	flag.Parse()
	inv := &Inventory{items: map[string]Item{}}
	for i, name := range strings.Fields("anvil bellows crucible tongs") {
		item := Item{SKU: fmt.Sprintf("KLN-%04d", i+1), Name: name, Quantity: 10 * (i + 1)}
		if err := inv.Put(item); err != nil {
			log.Fatal(err)
		}
	}
	if err := listing.Execute(os.Stdout, inv.Sorted()); err != nil {
		log.Fatal(err)
	}
	if *export == "" {
		return
	}
	data, sum, err := inv.Export()
	if err != nil {
		log.Fatal(err)
	}
	if err := os.WriteFile(*export, data, 0o644); err != nil {
		log.Fatal(err)
	}
	fmt.Println("sha256", sum)
}

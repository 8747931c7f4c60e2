#!/usr/bin/env python3
"""Import cycles between the modules of src/: prints each strongly connected group of modules
that import each other (through `use crate::..`, `use super::..` and such paths in code), with
the edges inside it, and exits 1 if there is any. Comments and unit-test modules are ignored.
Usage: python3 scripts/import-cycles.py"""
import os,re,sys
root=os.path.join(os.path.dirname(os.path.abspath(__file__)),'..','src')
mods={}
for dp,_,fs in os.walk(root):
    for f in fs:
        if not f.endswith('.rs'): continue
        p=os.path.join(dp,f); rel=os.path.relpath(p,root)[:-3].split('/')
        if rel[-1] in ('mod','lib','main'): rel=rel[:-1]
        mods['::'.join(rel)]=p
def resolve(cur, path):
    parts=path.split('::')
    if parts[0]=='crate': base=[]; parts=parts[1:]
    elif parts[0]=='super':
        base=cur.split('::') if cur else []
        while parts and parts[0]=='super': base=base[:-1]; parts=parts[1:]
    elif parts[0]=='self': base=cur.split('::') if cur else []; parts=parts[1:]
    else: return None
    # longest module prefix
    best=None
    for i in range(len(parts),-1,-1):
        m='::'.join(base+parts[:i])
        if m in mods: best=m; break
    return best
edges={m:set() for m in mods}
for m,p in mods.items():
    t=open(p).read()
    t=re.sub(r'(?m)^\s*//.*$','',t)
    t=re.sub(r'#\[cfg\(test\)\]\s*mod tests \{.*','',t,flags=re.S)
    for u in re.findall(r'(?:^|\s)use\s+([^;]+);',t):
        u=u.replace('\n',' ')
        # expand braces roughly
        head=u.split('{')[0].strip().rstrip(':')
        items=[head]
        if '{' in u:
            inner=u[u.index('{')+1:u.rindex('}')]
            for it in re.split(r',(?![^{]*\})',inner):
                it=it.strip().split(' as ')[0].split('{')[0].strip().rstrip(':')
                if it and it!='self': items.append(head+'::'+it)
        for it in items:
            r=resolve(m,it)
            if r and r!=m: edges[m].add(r)
    for path in re.findall(r'\b((?:crate|super)(?:::\w+)+)',t):
        r=resolve(m,path)
        if r and r!=m: edges[m].add(r)
# drop ancestor edges? report cycles
import itertools
sys.setrecursionlimit(10000)
idx={};low={};st=[];on=set();sccs=[];c=[0]
def sc(v):
    idx[v]=low[v]=c[0];c[0]+=1;st.append(v);on.add(v)
    for w in edges[v]:
        if w not in idx: sc(w);low[v]=min(low[v],low[w])
        elif w in on: low[v]=min(low[v],idx[w])
    if low[v]==idx[v]:
        comp=[]
        while True:
            w=st.pop();on.discard(w);comp.append(w)
            if w==v:break
        if len(comp)>1: sccs.append(comp)
for v in mods:
    if v not in idx: sc(v)
for s in sccs:
    print(sorted(s))
    for a in s:
        for b in edges[a]:
            if b in s: print('   ',a,'->',b)
print('%d modules, %d imports between them, %d cycles' % (len(mods), sum(len(v) for v in edges.values()), len(sccs)))
sys.exit(1 if sccs else 0)

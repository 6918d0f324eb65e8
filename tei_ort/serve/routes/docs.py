"""GET /docs and GET /api-doc/openapi.json. The page is self-contained (no CDN, no Swagger
bundle): air-gapped deployments get a working API page. It renders the OpenAPI document and
can send a request to each route."""

from __future__ import annotations

from sanic import Request
from sanic.response import HTTPResponse

from tei_ort.serve.replies import json_response

OPENAPI_PATH = "/api-doc/openapi.json"

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>tei_ort API</title>
<style>
body{font:15px/1.45 system-ui,sans-serif;margin:0 auto;max-width:62rem;padding:1rem;color:#222}
h1{font-size:1.4rem} h2{font-size:1.05rem;margin:0}
details{border:1px solid #ccd;border-radius:6px;margin:.5rem 0;padding:.4rem .7rem}
summary{cursor:pointer} .m{display:inline-block;width:3.4rem;font-weight:700}
.post{color:#2a6} .get{color:#26a} .tag{color:#888;font-size:.85em;margin-left:.5em}
pre,textarea{background:#f6f7f9;border:1px solid #dde;border-radius:4px;padding:.5rem;
overflow:auto;font:13px ui-monospace,monospace;width:100%;box-sizing:border-box}
button{margin:.3rem 0;padding:.3rem .9rem}
</style></head><body>
<h1 id="title">API</h1><p id="about"></p>
<p>Machine-readable: <a href="/api-doc/openapi.json">/api-doc/openapi.json</a>.
API key (if the server has one): <input id="key" type="password" size="24"></p>
<div id="ops"></div>
<script>
function el(tag, text, cls){const e=document.createElement(tag);
  if(text!==undefined)e.textContent=text; if(cls)e.className=cls; return e;}
function resolve(doc, schema, depth){
  if(!schema||depth>6)return schema;
  if(schema.$ref){return resolve(doc, doc.components.schemas[schema.$ref.split('/').pop()], depth+1);}
  const out=Array.isArray(schema)?[]:{};
  for(const k in schema){const v=schema[k];
    out[k]=(v&&typeof v==='object')?resolve(doc,v,depth+1):v;}
  return out;}
async function send(method, path, body, out){
  const headers={'content-type':'application/json'};
  const key=document.getElementById('key').value; if(key)headers.authorization='Bearer '+key;
  const started=performance.now();
  try{const r=await fetch(path,{method,headers,body:method==='POST'?body:undefined});
    const text=await r.text(); let shown=text;
    try{shown=JSON.stringify(JSON.parse(text),null,1);}catch(e){}
    out.textContent=r.status+' ('+Math.round(performance.now()-started)+' ms)\\n'+shown;
  }catch(e){out.textContent=String(e);}}
fetch('/api-doc/openapi.json').then(r=>r.json()).then(doc=>{
  document.getElementById('title').textContent=doc.info.title+' '+doc.info.version;
  document.getElementById('about').textContent=doc.info.description;
  const ops=document.getElementById('ops');
  for(const path of Object.keys(doc.paths)){for(const method of Object.keys(doc.paths[path])){
    const op=doc.paths[path][method]; const d=el('details'); const s=el('summary');
    s.append(el('span',method.toUpperCase(),'m '+method), el('code',path),
             el('span',' '+(op.summary||'')), el('span',(op.tags||[]).join(','),'tag'));
    d.append(s);
    const body=op.requestBody&&op.requestBody.content['application/json'].schema;
    if(body){d.append(el('h2','Request schema'),
      el('pre',JSON.stringify(resolve(doc,body,0),null,1)));}
    const ok=op.responses['200'].content;
    if(ok){d.append(el('h2','Example response'),
      el('pre',JSON.stringify(ok['application/json'].example,null,1)));}
    const input=el('textarea'); input.rows=4; input.value=method==='post'?'{"inputs": "hello"}':'';
    const out=el('pre',''); const b=el('button','Send '+method.toUpperCase()+' '+path);
    b.onclick=()=>send(method.toUpperCase(), path, input.value, out);
    if(method==='post')d.append(el('h2','Try it'), input); d.append(b, out);
    ops.append(d);}}});
</script></body></html>
"""


async def docs(request: Request) -> HTTPResponse:
    return HTTPResponse(PAGE, content_type="text/html; charset=utf-8")


async def openapi_json(request: Request) -> HTTPResponse:
    return json_response(request.app.ctx.openapi)
